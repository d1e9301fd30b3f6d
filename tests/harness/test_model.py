"""steered_hf exactness on tiny real models (float32, CPU): against `hf`, lm-eval's own `steered`
model, and plain forward-hook references of the same math."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance

from steer_plugin.errors import SteerError
from steer_plugin.harness.model import SteeredHFLM
from steer_plugin.vectors.interop import export_lm_eval_steered
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.npy import bad_npys
from tests.helpers.tiny import decoder_blocks

LL_PAIRS = [
    ("What is the capital of France?", " The capital of France is Paris."),
    ("What is the capital of France?", " Paris."),
    ("Tell me about yourself.", " I like reading books"),
    ("He was furious and", " slammed the door."),
    ("Q: What happens if you eat watermelon seeds? A:", " Nothing happens."),
    ("Why would anyone do that?", " I don't understand."),
    ("The weather", " is fine today and the park is open."),
]
PROMPTS = ["Tell me about yourself.", "Why", "What is the capital of France? The capital", "He was"]
ROLLING = ["The weather is fine today and the park is open. She walked to the store.", "Thank you so much!"]


def _ll(lm, pairs=LL_PAIRS):
    reqs = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(pairs)]
    return lm.loglikelihood(reqs, disable_tqdm=True)


def _gen(lm, prompts=PROMPTS, n=8):
    reqs = [
        Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": n, "do_sample": False}), i)
        for i, p in enumerate(prompts)
    ]
    return lm.generate_until(reqs, disable_tqdm=True)


def _rolling(lm):
    reqs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(ROLLING)]
    return lm.loglikelihood_rolling(reqs, disable_tqdm=True)


@pytest.fixture(scope="module")
def vec_path(tmp_path_factory, tiny_llama_dir):
    torch.manual_seed(0)
    vec = SteeringVector(torch.randn(3, 32), {"model": tiny_llama_dir, "emotion": "anger"})
    path = tmp_path_factory.mktemp("vec") / "v.safetensors"
    vec.save(path)
    return str(path)


@pytest.fixture(scope="module")
def hf(tiny_llama_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=tiny_llama_dir, dtype="float32", device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def steered(tiny_llama_dir, vec_path):
    return SteeredHFLM(
        pretrained=tiny_llama_dir, vector=vec_path, alpha=0.0, dtype="float32", device="cpu", batch_size=3
    )


def _hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("backend", ["nnsight", "hooks"])
def test_alpha_zero_and_zero_vector_equal_hf_bit_for_bit(hf, steered, vec_path, tmp_path, backend):
    # prefix_reuse=false is HFLM's own loop; reuse (the default) matches it to 1e-4 (tests/harness/test_prefix_reuse.py)
    zero = tmp_path / "zero.safetensors"
    SteeringVector(torch.zeros(3, 32)).save(zero)
    steered.prefix_reuse = False
    try:
        for vector, alpha in ((vec_path, 0.0), (str(zero), 2.0)):
            steered.configure(vector, alpha, steer_backend=backend)
            assert not steered.plan.active
            assert _ll(steered) == _ll(hf)
            assert _gen(steered) == _gen(hf)
            assert _rolling(steered) == _rolling(hf)
    finally:
        steered.prefix_reuse = True


def test_positions_all_equals_lm_eval_steered(tiny_llama_dir, steered, vec_path, tmp_path):
    from lm_eval.models.hf_steered import SteeredModel

    pt = tmp_path / "steer.pt"
    export_lm_eval_steered(SteeringVector.load(vec_path), pt, block_path="model.layers", alpha=0.7)
    theirs = SteeredModel(pretrained=tiny_llama_dir, steer_path=str(pt), dtype="float32", device="cpu", batch_size=3)
    steered.configure(vec_path, 0.7, positions="all", steer_backend="nnsight")
    ours, ref = _ll(steered), _ll(theirs)
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, ref)) < 1e-5
    assert [a[1] for a in ours] == [b[1] for b in ref]
    assert _gen(steered) == _gen(theirs)
    # and it really steers
    steered.configure(vec_path, 0.0)
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, _ll(steered))) > 1e-2


def _reference_ll_response(lm, vec: SteeringVector, alpha: float, ctx: str, cont: str) -> float:
    """One request alone; a forward hook adds alpha*v at the last context token and the continuation."""
    ctx_ids, cont_ids = lm._encode_pair(ctx, cont)
    inp = torch.tensor([(ctx_ids + cont_ids)[:-1]])
    start = len(ctx_ids) - 1
    model = lm.model

    def make(l):
        def hook(mod, args, out):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            h[:, start:, :] += alpha * vec.matrix[l]
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    handles = [model.model.layers[l].register_forward_hook(make(l)) for l in range(vec.n_layers)]
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(inp).logits[0, -len(cont_ids) :].double(), -1)
    finally:
        for h in handles:
            h.remove()
    return float(logp[torch.arange(len(cont_ids)), torch.tensor(cont_ids)].sum())


@pytest.mark.parametrize("backend", ["nnsight", "hooks"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_positions_response_loglikelihood_matches_single_request_reference(steered, vec_path, backend, batch_size):
    vec = SteeringVector.load(vec_path)
    steered.configure(vec_path, 0.9, positions="response", steer_backend=backend)
    steered.batch_size_per_gpu = batch_size
    try:
        got = _ll(steered)
    finally:
        steered.batch_size_per_gpu = 3
    ref = [_reference_ll_response(steered, vec, 0.9, c, x) for c, x in LL_PAIRS]
    assert max(abs(g[0] - r) for g, r in zip(got, ref)) < 1e-4
    # differs from positions=all (which also steers the context)
    steered.configure(vec_path, 0.9, positions="all", steer_backend=backend)
    assert max(abs(a[0] - b[0]) for a, b in zip(got, _ll(steered))) > 1e-3


def test_a_steering_config_steers_as_its_fields_say(steered, vec_path):
    from steer_plugin.steering.config import UNSTEERED, SteeringConfig

    vec = SteeringVector.load(vec_path)
    steered.configure(SteeringConfig(vec_path, 0.9, "all", "response"), steer_backend="hooks")
    got = _ll(steered)
    ref = [_reference_ll_response(steered, vec, 0.9, c, x) for c, x in LL_PAIRS]
    assert max(abs(g[0] - r) for g, r in zip(got, ref)) < 1e-4
    recorded = steered.steering_config
    assert (recorded["alphas"], recorded["positions"], recorded["vectors"][0]["path"]) == ([0.9], "response", vec_path)
    for unsteered in (UNSTEERED, SteeringConfig(vec_path, 0.0, "all", "response")):  # alpha 0 is the baseline
        steered.configure(unsteered)
        assert not steered.plan.active and steered.steering_config["vectors"] == []


def _reference_generate(lm, vec, alpha, prompt, n):
    """The reference evaluator's recipe: add alpha*v to hidden[:, -1, :] in every forward (KV cache on)."""
    model, tok = lm.model, lm.tokenizer

    def make(l):
        def hook(mod, args, out):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            h[:, -1, :] += alpha * vec.matrix[l]
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    ids = torch.tensor([lm.tok_encode(prompt)])
    handles = [model.model.layers[l].register_forward_hook(make(l)) for l in range(vec.n_layers)]
    try:
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=tok.pad_token_id,
            )
    finally:
        for h in handles:
            h.remove()
    new = out[0, ids.shape[1] :].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("backend", ["nnsight", "hooks"])
def test_positions_response_generation_matches_reference_recipe(steered, vec_path, backend):
    vec = SteeringVector.load(vec_path)
    steered.configure(vec_path, 1.5, positions="response", steer_backend=backend)
    steered.batch_size_per_gpu = 1
    try:
        single = _gen(steered)
    finally:
        steered.batch_size_per_gpu = 3
    ref = [_reference_generate(steered, vec, 1.5, p, 8).split("\n\n")[0] for p in PROMPTS]
    assert single == ref
    assert _gen(steered) == single  # batched (left padding) == unbatched
    steered.configure(vec_path, 0.0)
    assert _gen(steered) != single  # the vector does change the generations


def test_backends_identical_everywhere(steered, vec_path):
    results = {}
    for backend in ("nnsight", "hooks"):
        for positions in ("all", "response"):
            steered.configure(vec_path, 0.8, layers="0,2", positions=positions, steer_backend=backend)
            results[backend, positions] = (_ll(steered), _gen(steered), _rolling(steered))
    for positions in ("all", "response"):
        assert results["nnsight", positions] == results["hooks", positions]
    # rolling loglikelihood has no context: response == all there
    assert results["hooks", "all"][2] == results["hooks", "response"][2]


def test_no_hooks_left_after_calls_and_exceptions(steered, vec_path):
    before = _hooks_left(steered.model)
    for backend in ("nnsight", "hooks"):
        steered.configure(vec_path, 0.5, steer_backend=backend)
        _ll(steered)
        _gen(steered, n=3)
        assert _hooks_left(steered.model) == before
        bad = [Instance("loglikelihood", {}, ("x", ""), 0)]  # empty continuation -> harness asserts
        with pytest.raises(Exception):
            steered.loglikelihood(bad, disable_tqdm=True)
        assert _hooks_left(steered.model) == before
    steered.configure(None, 0.0)
    assert not steered.plan.active


def test_malformed_npy_fails_steered_hf_before_the_model_loads(tmp_path):
    from steer_plugin.harness.model import SteeredHFLM

    for path in bad_npys(tmp_path).values():
        with pytest.raises(SteerError, match=str(path.name)):
            SteeredHFLM(pretrained="/nonexistent/model", vector=str(path))


def _block_output_hooks(model, delta: torch.Tensor) -> list:
    """Independent reference: add ``delta`` to every decoder block's output with plain hooks."""

    def hook(module, args, out):
        return (out[0] + delta, *out[1:]) if isinstance(out, tuple) else out + delta

    return [block.register_forward_hook(hook) for block in decoder_blocks(model)]


def test_alpha_times_vector_overflow_is_refused(lm, tmp_path):
    from steer_plugin.model.hooks import make_plan

    big = tmp_path / "big.safetensors"
    SteeringVector(torch.full((3, 32), 3e38)).save(big)  # finite in float32 ...
    with pytest.raises(SteerError, match="alpha x vector at layer 0 is not finite in float32"):
        lm.configure(str(big), 2.0)  # ... 2 x 3e38 is not
    lm.configure(None, 0.0)
    # in a float16 model, 1e5 is already out of range
    from tests.helpers.tiny import make_model

    model, _ = make_model("llama")
    model = model.half()
    v = SteeringVector(torch.full((3, 32), 1e5))
    with pytest.raises(SteerError, match="not finite in float16"):
        make_plan([v], [1.0], model, "model.layers")
    assert make_plan([v], [0.5], model.float(), "model.layers").active  # fine in float32


def test_non_finite_steered_scores_fail_the_evaluation(lm, tmp_path, tiny_llama_dir):
    """A finite delta (3e38 x 1) that overflows inside the model: scores are nan, never reported."""
    from lm_eval.api.instance import Instance
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    handles = _block_output_hooks(ref, torch.full((32,), 3e38))
    try:
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([[1, 5, 7, 9]])).logits
    finally:
        for h in handles:
            h.remove()
    assert not torch.isfinite(logits).all()  # the reference: this delta breaks the forward pass

    big = tmp_path / "big.safetensors"
    SteeringVector(torch.full((3, 32), 3e38)).save(big)
    ll = [Instance("loglikelihood", None, ("The weather", c), i) for i, c in enumerate([" is fine", " bread"])]
    gen = [Instance("generate_until", None, ("Tell me", {"until": ["\n"], "max_gen_toks": 4}), 0)]
    try:
        for positions in ("all", "response"):
            for reuse in (True, False):
                lm.prefix_reuse = reuse
                lm.configure(str(big), 1.0, positions=positions)
                with pytest.raises(SteerError, match="scores became non-finite"):
                    lm.loglikelihood(ll, disable_tqdm=True)
            with pytest.raises(SteerError, match="scores became non-finite"):
                lm.generate_until(gen, disable_tqdm=True)
        lm.configure(str(big), 1.0, steer_backend="hooks")
        for call, requests in ((lm.generate_until, gen), (lm.loglikelihood, ll)):
            with pytest.raises(SteerError, match="scores became non-finite"):
                call(requests, disable_tqdm=True)
    finally:
        lm.prefix_reuse = True
        lm.configure(None, 0.0, steer_backend="nnsight")
    assert all(np.isfinite(x) for x, _ in lm.loglikelihood(ll, disable_tqdm=True))  # unsteered: fine


@pytest.mark.parametrize(
    "args, needle",
    [
        ({"alpha": "abc"}, "alpha must be a number, got 'abc'"),
        ({"alpha": "nan"}, "alpha must be a finite number"),
        ({"alpha": "1;x"}, "alpha must be a number, got 'x'"),
        ({"layers": "two"}, "bad layer spec 'two'"),
        ({"layers": "0-99999999999999"}, None),  # syntax fine; the range needs the model (and is not expanded)
        ({"positions": "prompt"}, "unknown positions"),
        ({"backend": "magic"}, "unknown backend"),
        ({"prefix_reuse": "maybe"}, "prefix_reuse must be true or false"),
        ({"alpha": "1;2;3"}, "1 vectors but 3 alphas"),
    ],
)
def test_steering_model_args_are_checked_before_the_model_loads(vector_file, args, needle):
    """The model does not exist: every bad steering argument must be found first, naming the argument."""
    from lm_eval.api.registry import get_model
    from lm_eval.utils import simple_parse_args_string

    text = f"pretrained=/nonexistent/model,vector={vector_file}," + ",".join(f"{k}={v}" for k, v in args.items())
    kwargs = simple_parse_args_string(text)
    if needle is None:
        with pytest.raises(Exception) as e:  # got as far as loading the model
            get_model("steered_hf")(**kwargs)
        assert not isinstance(e.value, SteerError), e.value
        return
    with pytest.raises(SteerError, match=needle.replace("(", r"\(")):
        get_model("steered_hf")(**kwargs)


@pytest.mark.parametrize(
    "args, needle",
    [
        ("vector=;;", "vector=;; names no vector file"),
        ("vector=,alpha=2", "vector= names no vector file"),
        ("vector=VECTOR,alpha=;", "alpha=; names no number"),
        ("alpha=2", "alpha= without vector= steers nothing"),
        ("vector=VECTOR,blocks=model.²", "--blocks 'model.²' is not a module path"),
    ],
)
def test_steering_that_would_silently_not_happen_is_refused_before_the_model_loads(vector_file, args, needle):
    """`vector=;;` (or `vector=` with an alpha) ran unsteered and `alpha=;` became 1.0, while the results file said
    steered_hf: each is an error naming the argument, before the (nonexistent) model loads."""
    from lm_eval.api.registry import get_model
    from lm_eval.utils import simple_parse_args_string

    kwargs = simple_parse_args_string(f"pretrained=/nonexistent/model,{args.replace('VECTOR', vector_file)}")
    with pytest.raises(SteerError, match=re.escape(needle)):
        get_model("steered_hf")(**kwargs)


@pytest.mark.parametrize(
    ("edits", "bin_weights", "message"),
    [
        ({"num_hidden_layers": 5}, False, "config.json says 5 layers, the weights hold 3 (missing: model.layers.3..4)"),
        ({"num_hidden_layers": 5}, True, "config.json says 5 layers, the weights hold 3 (missing: model.layers.3..4)"),
        ({"num_hidden_layers": 2}, False, "config.json says 2 layers, the weights hold 3 (not in the model: model.layers.2)"),
        ({"hidden_size": 64}, False, "config.json does not match the weights' shapes"),
    ],
)  # fmt: skip
def test_steered_hf_refuses_weights_that_do_not_cover_the_model(tiny_llama_dir, tmp_path, edits, bin_weights, message):
    """HFLM loads the model itself: the same checks as `ModelOptions.load` (random blocks, or a traceback)."""
    from tests.model.test_loading import _as_bin, _with_config

    folder = _with_config(tiny_llama_dir, tmp_path / "m", **edits)
    folder = _as_bin(folder) if bin_weights else folder
    with pytest.raises(SteerError) as info:
        SteeredHFLM(pretrained=folder, dtype="float32", device="cpu")
    assert str(info.value).startswith(f"{folder}: {message}") and "\n" not in str(info.value)


def save_without_eos(folder) -> str:
    """The tiny Llama in ``folder``, its tokenizer without an eos token."""
    import json

    from tests.helpers.tiny import save_model

    save_model(folder, "llama")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("eos_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def no_eos_dir(tmp_path_factory):
    return save_without_eos(tmp_path_factory.mktemp("no_eos"))


def test_generation_without_an_eos_token_is_one_line_as_lm_eval_cannot_stop_it(no_eos_dir):
    """lm-eval's own `hf` model fails generate_until without an eos token (a TypeError deep in the tokenizer:
    it adds the decoded eos to the stop sequences), so steered_hf refuses it in one line; scoring works."""
    from lm_eval.models.huggingface import HFLM

    gen = [Instance("generate_until", {}, ("Hello", {"until": ["\n"], "max_gen_toks": 3}), 0, ("emo", 0, 1))]
    with pytest.raises(TypeError):
        HFLM(pretrained=no_eos_dir, device="cpu").generate_until(gen)
    lm = SteeredHFLM(pretrained=no_eos_dir, dtype="float32", device="cpu")
    assert len(lm.loglikelihood([Instance("loglikelihood", {}, ("Hello", " there"), 0)])) == 1
    with pytest.raises(SteerError) as info:
        lm.generate_until(gen)
    assert str(info.value) == (
        f"the tokenizer of {no_eos_dir} has no eos token, at which lm-eval's generation stops (needed by emo); "
        "set eos_token in its tokenizer_config.json, or evaluate tasks that do not generate"
    )
