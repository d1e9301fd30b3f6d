"""Bad inputs and faults end in a one-line error or correct behaviour; a resumed sweep never reports stale results.

Sweeps run on a tiny Llama and a 4-question multiple-choice task; the references are plain JSON reads of
the files and, for overflow, a forward hook that adds the same row to a block's output.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_cli import assert_one_line_error, run_cli
from helpers_tiny import decoder_blocks, save_tiny_stats

from steer_plugin.cli import main
from steer_plugin.errors import SteerError
from steer_plugin.study.plan import SweepConfig, SweepOptions, SweepPlan
from steer_plugin.study.rows import load_rows
from steer_plugin.study.sweep import run_sweep
from steer_plugin.study.table import write_table
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats
from steer_plugin.vectors.vector import SteeringVector

DOCS = [
    {"q": "What is the capital of France?", "choices": [" Paris.", " London."], "gold": 0},
    {"q": "He was furious and", "choices": [" slammed the door.", " smiled."], "gold": 0},
    {"q": "The weather", "choices": [" is fine today.", " bread"], "gold": 0},
    {"q": "Tell me about yourself.", "choices": [" I like books.", " Go away!"], "gold": 1},
]
ESC, NUL, CSI = "\x1b", "\x00", "\x9b"
SWEEP_FILE = "sweep.json"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tasks")
    (d / "docs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in DOCS))
    (d / "rel_mc.yaml").write_text(
        "task: rel_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {d / 'docs.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n"
        "metadata:\n  version: 1.0\n"
    )
    return str(d)


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory, tiny_llama_dir) -> str:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("v") / "anger-mean.safetensors"
    SteeringVector(torch.randn(3, 32), {"model": tiny_llama_dir, "emotion": "anger", "method": "mean"}).save(path)
    return str(path)


@pytest.fixture(scope="module")
def lm(tiny_llama_dir, one_torch_thread):
    from steer_plugin.harness.model import SteeredHFLM

    return SteeredHFLM(pretrained=tiny_llama_dir, dtype="float32", device="cpu", batch_size=4)


def _options(out: Path, task_dir: str, tiny_llama_dir: str, **kw) -> SweepOptions:
    options = SweepOptions(
        tasks=["rel_mc"],
        out_dir=out,
        include_path=task_dir,
        bootstrap_iters=0,
        model_args={"pretrained": tiny_llama_dir},
    )
    for k, v in kw.items():
        setattr(options, k, v)
    return options


# --- 1. sweep resume --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(lm, task_dir, vector_file, tiny_llama_dir, tmp_path_factory):
    """A finished sweep (baseline, alpha 1, alpha 2); tests resume from copies of its folder."""
    out = tmp_path_factory.mktemp("finished") / "sweep"
    plan = SweepPlan.grid([vector_file], [0, 1.0, 2.0], ["all"], ["all"])
    files = run_sweep(lm, plan, _options(out, task_dir, tiny_llama_dir), progress=False)
    return out, plan, files


def _copy(finished, tmp_path: Path) -> tuple[Path, SweepPlan, list[Path]]:
    out, plan, files = finished
    shutil.copytree(out, tmp_path / "sweep", copy_function=shutil.copy2)
    return tmp_path / "sweep", plan, [tmp_path / "sweep" / f.relative_to(out) for f in files]


def test_sweep_records_its_plan_and_each_configuration_its_identity(finished, vector_file, tiny_llama_dir):
    from steer_plugin import __version__
    from steer_plugin.vectors.vector import file_sha256

    out, plan, files = finished
    doc = json.loads((out / SWEEP_FILE).read_text())
    assert doc["settings"]["model"] == tiny_llama_dir and doc["settings"]["tasks"] == ["rel_mc"]
    assert doc["settings"]["package_version"] == __version__ and doc["settings"]["limit"] is None
    assert [c["slug"] for c in doc["configs"]] == [c.slug() for c in plan.configs]
    assert doc["configs"][2]["vector_sha256"] == file_sha256(vector_file) and doc["configs"][2]["alpha"] == 2.0
    cfg = json.loads(files[2].read_text())["config"]
    assert cfg["sweep_settings"] == doc["settings"]
    assert cfg["sweep"]["slug"] == SweepConfig(vector_file, 2.0).slug()
    assert cfg["sweep"]["vector_sha256"] == file_sha256(vector_file)


def test_truncated_or_foreign_results_are_rerun_and_said_so(lm, finished, task_dir, tiny_llama_dir, tmp_path, capsys):
    out, plan, files = _copy(finished, tmp_path)
    want = [json.loads(f.read_text())["results"]["rel_mc"]["acc,none"] for f in files]
    plan_stamp = (out / SWEEP_FILE).stat().st_mtime_ns if (out / SWEEP_FILE).exists() else None
    files[2].write_bytes(files[1].read_bytes())  # another configuration's results copied over
    files[1].write_bytes(files[1].read_bytes()[:500])  # a truncated write of some other tool
    stamps = {f: f.stat().st_mtime_ns for f in files}
    run_sweep(lm, plan, _options(out, task_dir, tiny_llama_dir), progress=True)
    err = capsys.readouterr().err
    assert f"rerunning {plan.configs[1].slug()}: corrupt results.json (JSONDecodeError)" in err
    assert f"rerunning {plan.configs[2].slug()}: stale results.json (another configuration)" in err
    assert "resuming: 1/3 configurations already done" in err
    assert [json.loads(f.read_text())["results"]["rel_mc"]["acc,none"] for f in files] == want
    assert json.loads(files[2].read_text())["config"]["steering"]["alphas"] == [2.0]
    assert [f.stat().st_mtime_ns == stamps[f] for f in files] == [True, False, False]  # only those reran
    assert plan_stamp and (out / SWEEP_FILE).stat().st_mtime_ns == plan_stamp  # the plan is written once
    assert len(load_rows(out)) == 3  # every row is in the table again


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"limit": 2.0}, "limit null -> 2.0"),
        ({"tasks": ["rel_mc", "rel_mc2"]}, 'tasks ["rel_mc"] -> ["rel_mc", "rel_mc2"]'),
        ({"num_fewshot": 1}, "num_fewshot null -> 1"),
        ({"apply_chat_template": True}, "apply_chat_template false -> true"),
        ({"gen_kwargs": {"temperature": 0.5}}, "gen_kwargs null -> "),
        ({"model_args": {"pretrained": "other/model"}}, 'model "'),
        ({"model_args": {"pretrained": "TINY", "dtype": "float16"}}, 'dtype null -> "float16"'),
    ],
)
def test_folder_of_another_sweep_is_refused(lm, finished, task_dir, tiny_llama_dir, tmp_path, change, needle):
    out, plan, files = _copy(finished, tmp_path)
    if "model_args" in change:
        change = {"model_args": {k: tiny_llama_dir if v == "TINY" else v for k, v in change["model_args"].items()}}
    before = {f: f.read_bytes() for f in files}
    with pytest.raises(SteerError, match="holds another sweep") as e:
        run_sweep(lm, plan, _options(out, task_dir, tiny_llama_dir, **change), progress=False)
    assert needle in str(e.value) and "--out elsewhere, or --fresh" in str(e.value)
    assert {f: f.read_bytes() for f in files} == before  # untouched


def test_fresh_discards_only_what_a_sweep_wrote(lm, finished, task_dir, tiny_llama_dir, tmp_path):
    out, _, old_files = _copy(finished, tmp_path)
    write_table(out)
    (old_files[2].parent / "samples_rel_mc.jsonl").write_text("{}\n")
    (out / "notes.txt").write_text("mine")
    plan = SweepPlan.grid([finished[1].configs[1].vector], [1.0], ["all"], ["all"])
    options = _options(out, task_dir, tiny_llama_dir, limit=2.0)
    with pytest.raises(SteerError, match="limit"):
        run_sweep(lm, plan, options, progress=False)
    options.fresh = True
    files = run_sweep(lm, plan, options, progress=False)
    for f in files:
        assert json.loads(f.read_text())["config"]["limit"] == 2.0
    assert json.loads((out / SWEEP_FILE).read_text())["settings"]["limit"] == 2.0
    assert (out / "notes.txt").read_text() == "mine" and not (out / "leaderboard.md").exists()
    assert not old_files[2].parent.exists()  # alpha 2 is not in the new plan: its results and samples are gone
    assert len(load_rows(out)) == 2


def test_results_of_a_changed_vector_are_rerun(lm, task_dir, vector_file, tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    vec = tmp_path / "v.safetensors"
    vec.write_bytes(Path(vector_file).read_bytes())
    plan = SweepPlan.grid([str(vec)], [1.0, 2.0], ["all"], ["all"], baseline=False)
    files = run_sweep(lm, plan, _options(out, task_dir, tiny_llama_dir), progress=False)
    SteeringVector(torch.ones(3, 32) * 0.1, {"emotion": "anger"}).save(vec)  # rebuilt in place
    run_sweep(lm, plan, _options(out, task_dir, tiny_llama_dir), progress=True)
    err = capsys.readouterr().err
    assert err.count("stale results.json (the vector file changed since)") == 2, err
    from steer_plugin.vectors.vector import file_sha256

    for f, alpha in zip(files, (1.0, 2.0)):
        steering = json.loads(f.read_text())["config"]["steering"]
        assert steering["alphas"] == [alpha] and steering["vectors"][0]["sha256"] == file_sha256(vec)


def test_results_without_a_plan_are_refused_not_trusted(lm, finished, task_dir, tiny_llama_dir, tmp_path):
    out, plan, _ = _copy(finished, tmp_path)
    (out / SWEEP_FILE).unlink()  # as an older version leaves a sweep folder
    with pytest.raises(SteerError, match="holds sweep results but no sweep.json"):
        run_sweep(lm, plan, _options(out, task_dir, tiny_llama_dir), progress=False)
    (out / SWEEP_FILE).write_text("{not json")
    with pytest.raises(SteerError, match="sweep.json is unreadable"):
        run_sweep(lm, plan, _options(out, task_dir, tiny_llama_dir), progress=False)


def test_cli_sweep_into_another_models_folder_is_refused_before_loading(
    task_dir, vector_file, tiny_llama_dir, tmp_path, capsys, one_torch_thread
):
    out = tmp_path / "sweep"
    base = ["sweep", "--vector", vector_file, "--alphas", "1", "--tasks", "rel_mc", "--include-path", task_dir]
    base += ["--out", out, "--batch-size", "4", "--device", "cpu", "--bootstrap-iters", "0", "--no-side-effects"]
    assert run_cli([*base, "--model", tiny_llama_dir], capsys)[0] == 0
    # another model (one whose hidden size would not even fit the vector): it is never loaded
    code, _, err = run_cli([*base, "--model", "/nonexistent/other-model"], capsys)
    assert_one_line_error(code, err, "holds another sweep", "model", "/nonexistent/other-model", "--fresh")
    code, _, err = run_cli([*base, "--model", tiny_llama_dir, "--limit", "2"], capsys)
    assert_one_line_error(code, err, "limit null -> 2.0")
    code, _, err = run_cli([*base, "--model", tiny_llama_dir, "--limit", "2", "--fresh"], capsys)
    assert code == 0, err
    assert "--fresh: discarded 2 earlier result(s)" in err
    for f in out.glob("*/results.json"):
        assert json.loads(f.read_text())["config"]["limit"] == 2.0


# --- 1b/5. steer table: skipped files are named, shapes are validated ----------------------------------


def _good(model: str = "tiny") -> dict:
    return {"results": {"t": {"acc,none": 0.5}}, "config": {"model": "hf", "model_args": f"pretrained={model}"}}


@pytest.mark.parametrize(
    "doc, reason",
    [
        ({"results": [1, 2], "config": {}}, "'results' is not an object"),
        ({"results": {"t": {"acc,none": 1}}, "config": "notadict"}, "'config' is not an object"),
        ({"results": {"t": [1]}, "config": {}}, "'results' is not an object"),
        ({"results": {}, "config": {"steering": "x"}}, "'config.steering' is not an object"),
        ({"results": {}, "config": {"steering": {"vectors": ["a"], "alphas": [1]}}}, "vectors' is not a list"),
        ({"results": {}, "config": {"steering": {"vectors": [{}], "alphas": ["a"]}}}, "alphas' is not a list"),
        ({"results": {}, "config": {"model_args": [1, 2]}}, "model_args' is neither"),
        ([1, 2, 3], "not harness results"),
    ],
)
def test_table_skips_wrong_shapes_with_a_warning(tmp_path, capsys, doc, reason):
    (tmp_path / "good.json").write_text(json.dumps(_good()))
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    rows = load_rows(tmp_path)
    assert [r.source for r in rows] == ["good.json"]
    err = capsys.readouterr().err
    assert f"skipped {tmp_path / 'bad.json'}: " in err and reason in err, err


def test_table_names_unreadable_files_and_ignores_its_own_plan(tmp_path, capsys):
    (tmp_path / "good.json").write_text(json.dumps(_good()))
    (tmp_path / "truncated.json").write_text(json.dumps(_good())[:30])
    (tmp_path / "latin1.json").write_bytes(b'{"x": "\xff"}')
    (tmp_path / "folder.json").mkdir()  # a directory whose name ends in .json
    (tmp_path / SWEEP_FILE).write_text(json.dumps({"format": "steer-plugin/sweep", "settings": {}, "configs": []}))
    code, out, err = run_cli(["table", tmp_path], capsys)
    assert code == 0 and "tiny" in out
    assert "truncated.json: not readable JSON (JSONDecodeError)" in err
    assert "latin1.json: not readable JSON (UnicodeDecodeError)" in err
    assert SWEEP_FILE not in err and "folder.json" not in err
    (tmp_path / "good.json").unlink()
    code, _, err = run_cli(["table", tmp_path], capsys)
    assert code == 2 and "no harness results JSON" in err and "2 JSON file(s) skipped" in err


# --- 3. loaders ---------------------------------------------------------------------------------------


def _npy_with_header(path: Path, header: str, payload: bytes = b"") -> Path:
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload)
    return path


def _bad_npys(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["empty"] = tmp_path / "empty.npy"
    files["empty"].write_bytes(b"")
    huge = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1048576), }"
    files["huge"] = _npy_with_header(tmp_path / "huge.npy", huge, b"\0" * 64)
    files["unparsable"] = _npy_with_header(tmp_path / "unparsable.npy", "{'descr': '<f4', 'shape': (3,")
    good = tmp_path / "good.npy"
    np.save(good, np.ones((3, 32), dtype=np.float32))
    files["truncated"] = tmp_path / "truncated.npy"
    files["truncated"].write_bytes(good.read_bytes()[:-8])
    files["negative"] = _npy_with_header(
        tmp_path / "negative.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 32), }"
    )
    np.save(tmp_path / "bools.npy", np.ones((3, 32), dtype=bool))
    files["bools"] = tmp_path / "bools.npy"
    np.save(tmp_path / "huge_f64.npy", np.full((3, 32), 1e300))
    files["huge_f64"] = tmp_path / "huge_f64.npy"  # finite in float64, inf in float32
    return files


def test_malformed_npy_is_rejected_by_its_header(tmp_path, capsys):
    for name, path in _bad_npys(tmp_path).items():
        with pytest.raises(SteerError, match=str(path.name)):
            SteeringVector.load(path)
        out = tmp_path / f"{name}.safetensors"
        code, _, err = run_cli(["import", path, "--out", out], capsys)
        assert_one_line_error(code, err, "steer import: error:", path.name)
        assert not out.exists()
        # steer check reads the vector before the model: the model is never needed
        code, _, err = run_cli(["check", "--model", "/nonexistent/model", "--vector", path], capsys)
        assert_one_line_error(code, err, "steer check: error:", path.name)


def test_malformed_npy_fails_steered_hf_before_the_model_loads(tmp_path):
    from steer_plugin.harness.model import SteeredHFLM

    for path in _bad_npys(tmp_path).values():
        with pytest.raises(SteerError, match=str(path.name)):
            SteeredHFLM(pretrained="/nonexistent/model", vector=str(path))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_float_vectors_are_refused_not_cast(tmp_path, dtype):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    SteeringVector(torch.ones(3, 32), {"emotion": "anger"}).save(good)
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        header = f.metadata()
    bad = tmp_path / "ints.safetensors"
    save_file({"vector": torch.ones(3, 32).to(dtype)}, str(bad), metadata=header)
    with pytest.raises(SteerError, match=f"{str(dtype).removeprefix('torch.')}; a steering vector holds floats"):
        SteeringVector.load(bad)
    with pytest.raises(SteerError, match="holds floats"):
        SteeringVector(torch.ones(3, 32).to(dtype))
    stats = tmp_path / "stats.safetensors"
    g = torch.Generator().manual_seed(0)
    classes = {c: ClassStats(4, torch.randn(3, 32, generator=g, dtype=torch.float64), torch.ones(3, 32)) for c in "ab"}
    HiddenStateStats(classes, {"target": "a", "baseline": "b"}).save(stats)
    tensors, meta = {}, {}
    with safe_open(str(stats), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["a/mean"] = tensors["a/mean"].to(dtype)
    save_file(tensors, str(stats), metadata=meta)
    with pytest.raises(SteerError, match="corrupt stats file .*expected floats"):
        HiddenStateStats.load(stats)


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
    from helpers_tiny import make_model

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


@pytest.mark.parametrize("fmt", ["lm-eval-steered", "gguf"])
@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf", "1e39"])
def test_export_refuses_non_finite_alpha(tmp_path, capsys, fmt, alpha):
    vec = tmp_path / "v.safetensors"
    SteeringVector(torch.ones(3, 32)).save(vec)
    out = tmp_path / f"out.{fmt}"
    code, _, err = run_cli(["export", vec, "--format", fmt, "--out", out, f"--alpha={alpha}"], capsys)
    assert_one_line_error(code, err, "steer export: error:")
    assert ("--alpha must be a finite number" in err) or ("not finite in float32" in err), err
    assert not out.exists()


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


def test_cli_steering_arguments_are_checked_before_the_model_loads(tmp_path, vector_file, stats_file_for_build, capsys):
    """Neighbours of alpha=abc: every command that steers checks its steering arguments before loading."""
    no_model = ["--model", "/nonexistent/model"]
    sweep = ["sweep", *no_model, "--alphas", "1", "--tasks", "x", "--out", tmp_path / "s"]
    cases = [
        (["check", *no_model, "--vector", vector_file, "--alpha=nan"], "--alpha must be a finite number"),
        (["check", *no_model, "--vector", vector_file, "--layers", "x"], "bad layer spec 'x'"),
        (["generate", *no_model, "--vector", vector_file, "--layers", "1-"], "bad layer spec '1-'"),
        ([*sweep, "--vector", vector_file, "--layers", "abc"], "bad layer spec 'abc'"),
        ([*sweep, "--vector", vector_file, "--positions", "all,prompt"], "unknown positions 'prompt'"),
        ([*sweep, "--vector", tmp_path / "missing.safetensors"], "not found"),
        (["build", "--stats", stats_file_for_build, "--scale", "inf", "--out", tmp_path / "v"], "--scale must be"),
    ]
    for argv, needle in cases:
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, needle)
    assert not (tmp_path / "s").exists()
    with pytest.raises(SystemExit) as e:  # argparse's own usage error
        main(["generate", *no_model, "--vector", vector_file, "--alphas", "0,nan"])
    assert e.value.code == 2 and "expected finite numbers" in capsys.readouterr().err


def test_huge_layer_ranges_are_not_expanded(stats_file_for_build, tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    code, _, err = run_cli(
        ["build", "--stats", stats_file_for_build, "--layers", "0-99999999999", "--out", out], capsys
    )
    assert_one_line_error(code, err, "out of range: this model has layers 0-2")
    code, _, err = run_cli(["build", "--stats", stats_file_for_build, "--layers", "all", "--out", out], capsys)
    assert code == 0, err


@pytest.fixture()
def stats_file_for_build(tmp_path) -> Path:
    return save_tiny_stats(tmp_path / "stats.safetensors", model=f"tiny{ESC}[31mred")


# --- 4. files from elsewhere are data, not terminal input ----------------------------------------------


def _no_controls(text: str) -> None:
    for ch in (ESC, NUL, CSI, "\r", "\u202e"):
        assert ch not in text, repr(text)


def test_list_escapes_control_characters(tmp_path, capsys):
    root = tmp_path / "vectors"
    meta = {"emotion": f"an{ESC}[2J{NUL}ger\nfake row", "model": f"m{CSI}31m\u202eodel", "method": "mean"}
    SteeringVector(torch.ones(3, 32), meta).save(root / "a.safetensors")
    code, out, _ = run_cli(["list", root], capsys)
    assert code == 0
    _no_controls(out)
    lines = out.strip().splitlines()
    assert len(lines) == 3  # header, rule, one vector: the newline did not make a row
    assert "an\\x1b[2J\\x00ger\\nfake row" in lines[2] and "m\\x9b31m\\u202eodel" in lines[2]


def test_table_escapes_control_characters(tmp_path, capsys):
    doc = _good(f"evil{ESC}]0;title{NUL}\nmodel")
    doc["results"] = {f"task{ESC}[1m": {"acc,none": 0.5}}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    (tmp_path / f"bad{ESC}[2J.json").write_text("{")
    code, out, err = run_cli(["table", tmp_path], capsys)
    assert code == 0
    _no_controls(out)
    _no_controls(err)
    assert "evil\\x1b]0;title\\x00\\nmodel" in out and "task\\x1b[1m/acc" in out
    _no_controls((tmp_path / "leaderboard.md").read_text())
    assert (tmp_path / "leaderboard.md").read_text().count("\n") == 3


def test_analyze_escapes_control_characters(stats_file_for_build, tmp_path, capsys):
    code, out, _ = run_cli(["analyze", stats_file_for_build, "--emotion", "anger", "--out", tmp_path / "a"], capsys)
    assert code == 0
    _no_controls(out)
    assert "tiny\\x1b[31mred" in out


def test_check_report_and_errors_escape_control_characters(tmp_path, capsys):
    from steer_plugin.steering.check import CheckReport, format_report

    _no_controls(format_report(CheckReport(f"m{ESC}[2J", 1.0)))
    # an error message quoting a file name (or its contents) stays one line without escapes
    name = tmp_path / f"v{ESC}[31m\nx.safetensors"
    name.write_bytes(b"junk")
    code, _, err = run_cli(["export", name, "--format", "gguf", "--out", tmp_path / "o.gguf"], capsys)
    assert_one_line_error(code, err, "steer export: error:", "v\\x1b[31m\\nx.safetensors")
    _no_controls(err)
    stats = tmp_path / "s.safetensors"
    classes = {f"c{ESC}[2J": ClassStats(3, torch.zeros(3, 32, dtype=torch.float64), torch.ones(3, 32))}
    HiddenStateStats(classes, {}).save(stats)
    code, _, err = run_cli(
        ["build", "--stats", stats, "--emotion", "anger", "--out", tmp_path / "v.safetensors"], capsys
    )
    assert_one_line_error(code, err, "c\\x1b[2J")
    _no_controls(err)


def test_generate_output_escapes_control_characters():
    from steer_plugin.steering.generate import Generation, GenerationRun, GenerationSettings, format_run

    run = GenerationRun(GenerationSettings(), [0.0])
    run.generations.append(Generation(f"p{ESC}[2J", 0.0, f"line one\nline{ESC}[31m two", 3))
    text = format_run(run)
    _no_controls(text)
    assert "line one\nline\\x1b[31m two" in text  # newlines of the generation are kept


def test_printable():
    from steer_plugin.io.terminal import printable

    assert printable("plain ü 日本") == "plain ü 日本"
    assert printable(f"a{ESC}b{NUL}c\td\re\x7f{CSI}\u2028\u202e") == "a\\x1bb\\x00c\\td\\re\\x7f\\x9b\\u2028\\u202e"
    assert printable("a\nb", allow_newlines=True) == "a\nb"
    assert printable(Path("x")) == "x"
