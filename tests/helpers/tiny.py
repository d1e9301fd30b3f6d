"""Tiny real models (random weights from small configs) and a tiny trained tokenizer for tests."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "I am so angry right now, this is ridiculous!",
    "The weather is fine today and the park is open.",
    "Thank you so much, I love this, what a wonderful day.",
    "She walked to the store and bought some bread and milk.",
    "Why would anyone do that? I don't understand.",
    "What is the capital of France? The capital of France is Paris.",
    "Tell me about yourself. I like reading books about history and science.",
    "He was furious and slammed the door. Go away!",
    "Q: What happens if you eat watermelon seeds? A: Nothing happens.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()-",
]

ARCHS = ("llama", "gpt2", "gpt_neox", "opt", "qwen2")
SLIDING_ARCHS = ("gemma3",)  # sliding-window attention: make_config(..., sliding_window=...); not in ARCHS

# a minimal chat template with a system role, for tiny instruction-style models
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_config(arch: str, vocab_size: int, n_layers: int = 3, hidden: int = 32, sliding_window: int = 512):
    """``sliding_window``: gemma3's local window (its layers 1, 2, 4, 5, ... slide; every third attends to all)."""
    from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig, Qwen2Config

    if arch == "gemma3":
        return Gemma3TextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=hidden // 4,
            query_pre_attn_scalar=hidden // 4,
            max_position_embeddings=2048,
            sliding_window=sliding_window,
            layer_types=["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(n_layers)],
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        )
    if arch == "qwen2":
        return Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=n_layers,
            n_head=4,
            n_positions=512,
            bos_token_id=1,
            eos_token_id=2,
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
        )
    if arch == "opt":
        return OPTConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            word_embed_proj_dim=hidden,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        )
    raise ValueError(arch)


def make_model(arch: str = "llama", n_layers: int = 3, hidden: int = 32, seed: int = 0, tokenizer=None, **config):
    import torch
    from transformers import AutoModelForCausalLM

    tok = tokenizer or make_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(arch, len(tok), n_layers, hidden, **config))
    # scale the weights up a little so hidden states differ clearly between texts
    model.eval()
    return model, tok


def sharpen_attention(model, factor: float = 6.0) -> None:
    """Attention sharper than the 0.02-std init, so that a wrong position, mask or cache row shows: the
    query/key projections scaled by ``factor`` (gemma3 normalises queries and keys after them: its q/k norms'
    scales, ``1 + weight``, are scaled instead)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "c_attn.weight")):
                param.mul_(factor)
            elif model.config.model_type == "gemma3_text" and name.endswith(("q_norm.weight", "k_norm.weight")):
                param.copy_(factor * (1 + param) - 1)


def save_model(path: Path, arch: str = "llama", chat: bool = False, head_scale: float = 1.0, **kw) -> str:
    """``head_scale``: the LM head times this (30: next-token distributions far from uniform, so steering can
    move the KL to a few nats instead of saturating near 0.01, and a KL budget such as kl:0.1 is reachable)."""
    import torch

    model, tok = make_model(arch, **kw)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(head_scale)
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


# --- independent references for the recording -> statistics -> vector tests -----------------------
# Written without steer_plugin (no find_block_path, no prompts.encode), so they can catch its bugs.

_BLOCKS_BY_MODEL_TYPE = {
    "llama": ("model", "layers"),
    "qwen2": ("model", "layers"),
    "gpt2": ("transformer", "h"),
    "gpt_neox": ("gpt_neox", "layers"),
    "opt": ("model", "decoder", "layers"),
    "gemma3_text": ("model", "layers"),
}


def decoder_blocks(model):
    obj = model
    for part in _BLOCKS_BY_MODEL_TYPE[model.config.model_type]:
        obj = getattr(obj, part)
    return list(obj)


def hook_last_token_states(model, tokenizer, texts):
    """[N, L, H] float64: each text run alone (no padding) with a plain forward hook on every block."""
    import numpy as np
    import torch

    blocks = decoder_blocks(model)
    out = []
    for text in texts:
        got = {}

        def make_hook(k):
            def hook(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                got[k] = h[0, -1].detach().to(torch.float64).clone()

            return hook

        handles = [b.register_forward_hook(make_hook(k)) for k, b in enumerate(blocks)]
        try:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            for h in handles:
                h.remove()
        out.append(torch.stack([got[k] for k in range(len(blocks))]).numpy())
    return np.stack(out)


def write_goemotions_every_label(folder: Path, sizes: dict[str, int] | None = None, default: int = 3) -> Path:
    """A GoEmotions folder with every label in the train split (single-label rows, unique texts: ``sizes`` per
    label, else ``default``), the fixture's other files beside it: what ``--centre emotions`` (the 27 emotions'
    means, `steer run`'s default) needs, which the hand-written fixture lacks."""
    import shutil

    from steer_plugin.data.goemotions import LABELS

    fixture = Path(__file__).parents[1] / "fixtures" / "goemotions"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("emotions.txt", "dev.tsv", "test.tsv", "ekman_mapping.json"):
        shutil.copy(fixture / name, folder / name)
    corpus = CORPUS[:-1]  # the last line has quotes, which the TSV would need escaped
    rows = [
        f"{label} {k}: {corpus[(i + 3 * k) % len(corpus)]}\t{i}\tr{i}_{k}"
        for i, label in enumerate(LABELS)
        for k in range((sizes or {}).get(label, default))
    ]
    (folder / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def read_goemotions_rows(path):
    """(text, frozenset of label names) per row of a GoEmotions TSV, read with the csv module."""
    import csv

    folder = Path(path).parent
    names = [n.strip() for n in (folder / "emotions.txt").read_text(encoding="utf-8").splitlines() if n.strip()]
    with open(path, newline="", encoding="utf-8") as f:
        return [(row[0], frozenset(names[int(i)] for i in row[1].split(","))) for row in csv.reader(f, delimiter="\t")]


def save_tiny_stats(path: Path, model: str = "tiny") -> Path:
    """A stats file of anger vs neutral (3 layers x 32, 5 texts each, seeded), as `steer build --stats` reads."""
    import torch

    from steer_plugin.vectors.stats import ClassStats, HiddenStateStats

    g = torch.Generator().manual_seed(0)
    classes = {
        c: ClassStats(5, torch.randn(3, 32, generator=g, dtype=torch.float64), torch.rand(3, 32, dtype=torch.float64))
        for c in ("anger", "neutral")
    }
    HiddenStateStats(classes, {"model": model, "target": "anger", "baseline": "neutral"}).save(path)
    return path


def load_script(name: str):
    """``scripts/<name>.py`` as a module (registered in ``sys.modules`` first: dataclasses look their module up)."""
    import importlib.util
    import sys

    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def write_mc_task(folder: Path, name: str, docs: list[dict], metrics: tuple[str, ...] = ("acc",)) -> str:
    """A harness multiple-choice task ``name`` over ``docs`` ({q, choices, gold}) in ``folder``; returns the folder."""
    import json

    (folder / "docs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    metric_list = "".join(f"  - metric: {m}\n" for m in metrics)
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'docs.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        f"doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n{metric_list}"
        "metadata:\n  version: 1.0\n"
    )
    return str(folder)


def hook_block_states(model, ids):
    """[T, L, H] float64: every position's block outputs for one sequence of token ``ids`` run alone (no
    padding), with a plain forward hook on every block."""
    import numpy as np
    import torch

    blocks = decoder_blocks(model)
    got = {}

    def make_hook(k):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            got[k] = h[0].detach().to(torch.float64).clone()

        return hook

    handles = [b.register_forward_hook(make_hook(k)) for k, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([list(ids)]))
    finally:
        for h in handles:
            h.remove()
    return np.stack([got[k].numpy() for k in range(len(blocks))], axis=1)


# llama.cpp's names of a Llama's tensors (convert_hf_to_gguf.py), per decoder block and outside the blocks
_GGUF_BLOCK_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip
_GGUF_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}  # fmt: skip


def write_gguf(model, tokenizer, path: Path) -> Path:
    """The tiny Llama ``model`` (from ``make_model``) as a float32 GGUF file the way llama.cpp's converter writes
    one, written here with the ``gguf`` package alone: its metadata, its byte-level BPE tokenizer (tokens, merges)
    and its tensors, q/k rows permuted to llama.cpp's interleaved RoPE pairs (transformers' loader undoes it)."""
    import json

    import gguf
    import numpy as np

    cfg = model.config

    def permute(w, n_head):
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    bpe = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(bpe["vocab"].items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_unk_token_id(tokenizer.unk_token_id)
    w.add_add_bos_token(False)
    for name, param in model.state_dict().items():
        t = param.detach().float().numpy()
        if name in _GGUF_TENSORS:
            w.add_tensor(_GGUF_TENSORS[name], t)
            continue
        _, _, block, *module, _ = name.split(".")
        module = ".".join(module)
        if module in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = cfg.num_attention_heads if module == "self_attn.q_proj" else cfg.num_key_value_heads
            t = np.ascontiguousarray(permute(t, heads))
        w.add_tensor(f"blk.{block}.{_GGUF_BLOCK_TENSORS[module]}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def truthfulqa_instances(folder, limit: int) -> list:
    """The harness's loglikelihood instances of our truthfulqa_local_mc1/mc2 tasks on a TruthfulQA JSONL folder,
    ``limit`` questions each."""
    import pytest
    from lm_eval.tasks import TaskManager

    from steer_plugin.harness.tasks import tasks_dir

    mp = pytest.MonkeyPatch()
    mp.setenv("STEER_TRUTHFULQA_DIR", str(folder))
    try:
        tasks = TaskManager(include_path=str(tasks_dir()), include_defaults=False).load(
            ["truthfulqa_local_mc1", "truthfulqa_local_mc2"]
        )["tasks"]
        instances = []
        for task in tasks.values():
            task.build_all_requests(limit=limit, rank=0, world_size=1)
            instances += task.instances
    finally:
        mp.undo()
    return instances


CORPUS_WORDS = " ".join(CORPUS).replace("?", "").replace("!", "").replace(".", "").split()


def sharp_model(arch: str):
    """A tiny random model whose next-token distributions are far from uniform (LM head x30), so that
    steering can move the KL up to a few nats instead of saturating near 0.01."""
    import torch

    model, tok = make_model(arch, n_layers=3, hidden=32, seed=3)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    return model, tok
