"""The benchmarks (``benchmarks/``) run end to end at a tiny size, and write only their own sections.

Not timing tests: each benchmark runs once on a tiny random model with a tiny tokenizer and
generated text, into a temporary BENCHMARKS.md, and we check what it measured and wrote. The memory
and sweep benchmarks spawn subprocesses (marked ``slow``).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

import benchmarks.config_batching
import benchmarks.eval
import benchmarks.memory
import benchmarks.record
import benchmarks.sweep
from benchmarks import common as bc

FOREIGN = "## Prefix reuse\n\nSomeone else's table | a | b |\n"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    from tests.helpers.tiny import make_tokenizer

    path = tmp_path_factory.mktemp("bench_tok")
    make_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture()
def md(tmp_path) -> Path:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(FOREIGN, encoding="utf-8")
    return path


def _common(tok_dir: str, md: Path, tmp_path: Path, name: str) -> list[str]:
    return ["--tokenizer", tok_dir, "--md", str(md), "--json", str(tmp_path / f"{name}.json")]


def _section(md: Path, key: str) -> str:
    text = md.read_text(encoding="utf-8")
    assert FOREIGN in text, "another engineer's section was changed"
    start, end = text.index(f"<!-- bench:{key} -->"), text.index(f"<!-- /bench:{key} -->")
    return text[start:end]


def test_replace_section_keeps_foreign_text_and_our_order():
    text = "intro by someone\n" + FOREIGN
    text = bc.replace_section(text, "eval", "## 3. eval v1")
    text = bc.replace_section(text, "record", "## 1. record")
    text = bc.replace_section(text, "eval", "## 3. eval v2")
    assert "eval v1" not in text and text.count("eval v2") == 1
    assert text.index("## 1. record") < text.index("## 3. eval v2")  # our sections stay in order
    assert "intro by someone\n" in text and FOREIGN in text  # untouched
    # a section inserted between two of ours goes between them, not after the foreign text
    text = bc.replace_section(text + "\n## later foreign\n", "memory", "## 2. memory")
    assert text.index("## 1. record") < text.index("## 2. memory") < text.index("## 3. eval v2")
    assert text.rstrip().endswith("## later foreign")


def test_quoted_commands_name_runnable_benchmarks():
    """Every `python -m benchmarks.X` that BENCHMARKS.md and CONTRIBUTING.md quote is a module here."""
    repo = Path(__file__).resolve().parents[2]
    docs = {name: (repo / name).read_text(encoding="utf-8") for name in ("BENCHMARKS.md", "CONTRIBUTING.md")}
    quoted = {m for text in docs.values() for m in re.findall(r"python -m (benchmarks\.\w+)", text)}
    assert {"benchmarks.record", "benchmarks.eval", "benchmarks.prefix_reuse"} <= quoted
    assert [m for m in sorted(quoted) if importlib.util.find_spec(m) is None] == []
    assert not any("scripts/bench_" in text for text in docs.values())


def test_quoted_commands_name_no_machine_paths():
    """A benchmark quotes its command with absolute paths as ``path/to/<name>``; BENCHMARKS.md has none of this machine's."""
    line = bc.command_line(
        "run", ["--model", "/root/models/SmolLM2-135M-Instruct/", "--data=/srv/goemotions", "--limit", "50"]
    )
    assert line == "python -m benchmarks.run --model path/to/SmolLM2-135M-Instruct --data=path/to/goemotions --limit 50"
    repo = Path(__file__).resolve().parents[2]
    commands = re.findall(r"^- command: `([^`]*)`", (repo / "BENCHMARKS.md").read_text(encoding="utf-8"), re.M)
    assert commands and [c for c in commands if re.search(r"(^|[\s=])/(root|work|home|Users)/", c)] == []


def test_bench_record_tiny(tok_dir, md, tmp_path):
    assert (
        benchmarks.record.main(
            [
                "--model",
                "tiny",
                "--texts",
                "12",
                "--batch-size",
                "4",
                "--repeats",
                "1",
                "--source",
                "generated",
                *_common(tok_dir, md, tmp_path, "rec"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "rec.json").read_text())
    assert set(data["seconds"]) == {"steer record", "plain loop", "plain loop, no LM head", "reference"}
    # all approaches computed the same class means (independent transformers loops vs nnsight)
    assert max(data["agreement"].values()) < 1e-5
    body = _section(md, "record")
    assert "- command: `python -m benchmarks.record --model tiny --texts 12 " in body  # how to rerun it
    assert "## 1. Recording throughput" in body and ">= 0.9x the plain loop" in body
    assert "<!-- bench:intro -->" in md.read_text()


@pytest.mark.slow  # one child process per (approach, size)
def test_bench_memory_tiny(tok_dir, md, tmp_path):
    assert (
        benchmarks.memory.main(
            [
                "--model",
                "tiny",
                "--sizes",
                "8",
                "--parallel",
                "2",
                "--source",
                "generated",
                *_common(tok_dir, md, tmp_path, "mem"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "mem.json").read_text())
    assert set(data) == {"steer:8", "reference:8"}
    assert all(r["peak_mb"] > 50 for r in data.values())  # torch alone is bigger than that
    assert "peak RSS while recording grows <= 10%" in _section(md, "memory")


def test_bench_eval_tiny(tok_dir, md, tmp_path, monkeypatch):
    # three TruthfulQA rows in the HF schema: the harness task reads them like the real file
    tq = tmp_path / "tq"
    tq.mkdir()
    rows = [
        {
            "question": f"What is {x}?",
            "mc1_targets": {"choices": ["A.", "B."], "labels": [1, 0]},
            "mc2_targets": {"choices": ["A.", "B.", "C."], "labels": [1, 0, 0]},
        }
        for x in ("up", "down", "it")
    ]
    (tq / "truthfulqa_mc.validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("STEER_TRUTHFULQA_DIR", str(tq))
    assert (
        benchmarks.eval.main(
            [
                "--model",
                "tiny",
                "--repeats",
                "1",
                "--ll-limit",
                "2",
                "--gen-limit",
                "2",
                "--gen-tokens",
                "3",
                "--profile",
                "steered_hf nnsight",
                *_common(tok_dir, md, tmp_path, "eval"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "eval.json").read_text())
    assert set(data["ll"]) == set(data["gen"]) == set(benchmarks.eval.VARIANTS)
    # steered_hf reproduces lm-eval's `steered` (both add alpha*v at every position of every block)
    assert max(data["agreement"]["ll"].values()) < 1e-4
    assert all(data["agreement"]["gen_same"].values()) and all(data["agreement"]["ll_same"].values())
    body = _section(md, "eval")
    assert "`steered_hf nnsight` <= 1.15x `hf` (loglikelihood)" in body
    assert "torch kernels" in _section(md, "profile")


@pytest.mark.slow  # cold `steer sweep` / `lm_eval` processes (~30-60 s on 2 cores)
def test_bench_sweep_tiny(tok_dir, md, tmp_path, monkeypatch):
    tq = tmp_path / "tq"
    tq.mkdir()
    row = {
        "question": "Why?",
        "mc1_targets": {"choices": ["A.", "B."], "labels": [1, 0]},
        "mc2_targets": {"choices": ["A.", "B."], "labels": [1, 0]},
    }
    (tq / "truthfulqa_mc.validation.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("STEER_TRUTHFULQA_DIR", str(tq))
    assert (
        benchmarks.sweep.main(
            [
                "--model",
                "tiny",
                "--alphas",
                "0,1",
                "--limit",
                "1",
                "--repeats",
                "1",
                *_common(tok_dir, md, tmp_path, "sweep"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["sweep"] == data["separate"]  # the same accuracies both ways
    assert "## 4. Sweeps" in _section(md, "sweep")


def test_bench_config_batching_tiny(md, tmp_path):
    from tests.helpers.tiny import save_model

    model_dir = save_model(tmp_path / "model", "llama")
    argv = ["--model", model_dir, "--prompts", "3", "--ks", "2,6", "--max-gen-toks", "4", "--batch-size", "2",
            "--md", str(md), "--json", str(tmp_path / "cb.json")]  # fmt: skip
    assert benchmarks.config_batching.main(argv) == 0
    data = json.loads((tmp_path / "cb.json").read_text())
    assert set(data) == {"2", "6"}
    assert data["6"]["identical"] == [18, 18]  # 3 prompts x 6 configurations, the same text both ways
    section = _section(md, "config-batching")
    assert "## 7. Config batching" in section and "| 6 |" in section

    argv = ["--model", model_dir, "--prompts", "2", "--ks", "6", "--max-gen-toks", "2", "--batch-size", "2",
            "--side-effects", "5", "--md", str(md), "--json", str(tmp_path / "cbs.json")]  # fmt: skip
    assert benchmarks.config_batching.main(argv) == 0
    data = json.loads((tmp_path / "cbs.json").read_text())
    assert data["6"]["side_effect_max_difference"] < 1e-5  # each configuration's side effects, both ways
    assert _section(md, "config-batching") == section  # the generation-only section is left alone
    assert "## 7d. Config batching with side effects" in _section(md, "config-batching-side-effects")


def test_bench_quality_tiny(md, tmp_path):
    """The quality metrics' cost against a (synthetic) run folder of one configuration written with --log-samples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import benchmarks.quality
    from steer_plugin.steering.generation_nll import continuation_nll
    from tests.helpers.tiny import save_model

    model_dir = save_model(tmp_path / "model", "llama", chat=True)
    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    config = tmp_path / "run" / "baseline"
    config.mkdir(parents=True)
    prompts, outputs = ["Tell me about yourself.", "Describe a kitchen."], ["I like books.", ""]
    nlls = continuation_nll(
        model, tok, [(tok(p)["input_ids"], tok(o)["input_ids"] or [tok.eos_token_id]) for p, o in zip(prompts, outputs)]
    )
    rows = [{"doc_id": i, "arguments": [[p, {}]], "resps": [[o]], "gen_nll": n.per_token}
            for i, (p, o, n) in enumerate(zip(prompts, outputs, nlls))]  # fmt: skip
    (config / "samples_steer_emotion_anger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (config / "results.json").write_text(json.dumps({"config": {"seconds": 100.0, "side_effects": {"seconds": 20.0}}}))
    args = ["--model", model_dir, "--run", str(tmp_path / "run"), "--md", str(md), "--json", str(tmp_path / "q.json")]
    assert benchmarks.quality.main(args) == 0
    data = json.loads((tmp_path / "q.json").read_text())
    assert data["outputs"] == 2 and data["run_s"] == 120.0 and data["max_abs_diff_gen_nll"] < 1e-5
    assert data["share"] == (data["fluency_s"] + data["text_s"]) / 120.0
    assert "quality metrics ≤ 15% of a run" in _section(md, "quality")


def test_bench_run_phases_add_up_to_the_wall_time(tmp_path):
    """The end-to-end benchmark's phase table, from a (synthetic) run folder of two configurations."""
    import benchmarks.run

    for name, config in {
        "baseline": {"seconds": 100.0, "generation_fluency_seconds": 5.0, "side_effects": {"seconds": 3.0},
                     "request_seconds": {"loglikelihood": 50.0, "generate_until": 40.0}},
        "prompted_anger": {"seconds": 20.0, "generation_fluency_seconds": 2.0, "side_effects": {"seconds": 1.0},
                           "request_seconds": {"loglikelihood": 0.0, "generate_until": 15.0}},
    }.items():  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"config": config}))
    got = dict(benchmarks.run.phases(tmp_path, wall=150.0))
    assert list(got.values()) == [50.0, 55.0, 7.0, 4.0, 120.0 - 50.0 - 55.0 - 7.0, 150.0 - 124.0]
    assert sum(got.values()) == 150.0
    assert "verified" in benchmarks.run.calibration_note("  verified the stored calibration on this model (...)")
