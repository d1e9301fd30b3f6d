"""Paired statistics vs the baseline: hand-computed cases, scipy, and real lm_eval --log_samples output."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import scipy.stats

from steer_plugin.study import paired
from steer_plugin.study.paired import PairedBootstrap, match_documents, read_scores, samples_files
from steer_plugin.study.rows import load_rows
from steer_plugin.study.table import write_table


def _scipy_ci(c: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    res = scipy.stats.bootstrap(
        (c, b),
        lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@pytest.mark.parametrize(("n", "resamples", "seed"), [(5, 1000, 0), (37, 1000, 7), (124, 2000, 3)])
def test_interval_equals_scipy_paired_percentile_bootstrap(n, resamples, seed):
    rng = np.random.default_rng(n)
    b = rng.random(n)
    c = b + rng.normal(0.05, 0.2, n)
    got = PairedBootstrap(resamples, seed).compare(c, b)
    lo, hi = _scipy_ci(c, b, resamples, seed)
    assert got.ci_low == pytest.approx(lo, abs=1e-12) and got.ci_high == pytest.approx(hi, abs=1e-12)
    assert got.delta == c.mean() - b.mean()  # exact: the difference of the two means
    assert got.n == n


def test_hand_computed_bootstrap_intervals():
    # d = (0, 1): the 4 ordered resamples have means 0, .5, .5, 1 -> 2.5th / 97.5th percentiles 0 and 1
    r = PairedBootstrap(1000).compare([0.0, 1.0], [0.0, 0.0])
    assert (r.delta, r.ci_low, r.ci_high) == (0.5, 0.0, 1.0)
    # d = (0, 0, 0, 1): resample mean k/4 with k ~ Binomial(4, 1/4); P(k <= 2) = .949, P(k <= 3) = .996,
    # so the 97.5th percentile is 3/4 and the 2.5th is 0 (P(k = 0) = .32)
    r = PairedBootstrap(10000).compare([0, 0, 0, 1], [0, 0, 0, 0])
    assert (r.delta, r.ci_low, r.ci_high) == (0.25, 0.0, 0.75)
    assert not r.significant


def test_exact_sign_flip_p_values():
    # d = (1, 2, 3): of the 8 sign vectors only +++ and --- reach |sum| >= 6
    assert PairedBootstrap(1000).compare([1, 2, 3], [0, 0, 0]).p == 0.25
    # d = (1, -1, 2): |sum| = 2; sums over signs: +-4, +-2 (twice each), 0 (twice) -> 6 of 8 reach 2
    assert PairedBootstrap(1000).compare([1, -1, 2], [0, 0, 0]).p == 0.75
    # against scipy's exact paired permutation test (symmetric null, so two-sided p's agree)
    rng = np.random.default_rng(1)
    d = rng.normal(0.4, 1, 9)
    ref = scipy.stats.permutation_test(
        (d,), lambda x, axis=-1: x.mean(axis=axis), permutation_type="samples", n_resamples=np.inf
    ).pvalue
    assert PairedBootstrap(1000).compare(d, np.zeros(9)).p == pytest.approx(ref, abs=1e-12)


def test_identical_arms_and_a_clear_effect():
    x = np.random.default_rng(2).random(50)
    r = PairedBootstrap().compare(x, x)
    assert (r.delta, r.ci_low, r.ci_high, r.p) == (0.0, 0.0, 0.0, 1.0)
    assert not r.significant and r.format() == "+0.000 [+0.000, +0.000]"
    up = PairedBootstrap(2000, seed=5).compare(x + 0.1 + 0.01 * np.sin(np.arange(50)), x)
    assert up.significant and up.ci_low > 0.09 and up.p == 1 / 2001  # no sign vector beats all-positive
    assert up.format().endswith("]*")


def test_seeded_and_chunked(monkeypatch):
    rng = np.random.default_rng(4)
    c, b = rng.random(60), rng.random(60)
    a1, a2 = PairedBootstrap(1500, seed=1).compare(c, b), PairedBootstrap(1500, seed=1).compare(c, b)
    assert a1 == a2
    assert PairedBootstrap(1500, seed=2).compare(c, b) != a1
    # large inputs are drawn in chunks and not cached: the same numbers
    monkeypatch.setattr(paired, "_CACHE_LIMIT", 10)
    assert PairedBootstrap(1500, seed=1).compare(c, b) == a1
    monkeypatch.setattr(paired, "_CHUNK", 300)  # 5 rows per chunk: another draw order, same distribution
    other = PairedBootstrap(1500, seed=1).compare(c, b)
    assert other.delta == a1.delta and abs(other.ci_low - a1.ci_low) < 0.03


def test_documents_are_matched_by_id_and_hashes():
    config = {(0, "a", "p"): 1.0, (1, "b", "p"): 0.0, (2, "c", "p"): 1.0}
    baseline = {(2, "c", "p"): 0.5, (1, "b", "p"): 0.25, (0, "a", "OTHER PROMPT"): 0.0}
    assert match_documents(config, baseline) == ([0.0, 1.0], [0.25, 0.5])
    assert match_documents({(0, None, None): 1.0}, {(0, "a", "p"): 0.0}) == ([1.0], [0.0])


# --- real lm_eval output ----------------------------------------------------------------------------

DOCS = [
    {"q": "What is the capital of France?", "choices": [" Paris.", " London.", " I don't know."], "gold": 0},
    {"q": "He was furious and", "choices": [" slammed the door.", " smiled."], "gold": 0},
    {"q": "The weather", "choices": [" is fine today.", " is angry.", " bread"], "gold": 0},
    {"q": "Tell me about yourself.", "choices": [" I like books.", " Go away!"], "gold": 1},
    {"q": "She walked to the store and", "choices": [" bought bread.", " flew away.", " angry"], "gold": 0},
    {"q": "Why would anyone do that?", "choices": [" I don't understand.", " Paris."], "gold": 0},
    {"q": "Thank you so much,", "choices": [" I love this.", " go away."], "gold": 0},
    {"q": "Q: What happens if you eat watermelon seeds? A:", "choices": [" Nothing happens.", " You die."], "gold": 0},
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    """tiny_pair: multiple choice (acc, 0/1 per document); tiny_ll: the gold answer's loglikelihood as a
    mean-aggregated metric ``ll`` (continuous, moves with steering) and as ``perplexity`` (not a mean)."""
    d = tmp_path_factory.mktemp("tasks")
    (d / "docs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in DOCS))
    data = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'docs.jsonl'}\ntest_split: test\n"
    (d / "tiny_pair.yaml").write_text(
        f"task: tiny_pair\n{data}output_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n"
    )
    (d / "tiny_ll_utils.py").write_text(
        "def target(doc):\n    return doc['choices'][doc['gold']]\n\n\n"
        "def process(doc, results):\n    ll = results[0][0]\n    return {'ll': ll, 'perplexity': ll}\n"
    )
    (d / "tiny_ll.yaml").write_text(
        f"task: tiny_ll\n{data}output_type: loglikelihood\n"
        "doc_to_text: q\ndoc_to_target: !function tiny_ll_utils.target\n"
        "process_results: !function tiny_ll_utils.process\n"
        "metric_list:\n  - metric: ll\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "metadata:\n  version: 1.0\n"
    )
    return str(d)


@pytest.fixture(scope="module")
def manager(task_dir):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=task_dir)


def _lm_eval_run(model: str, model_args: str, manager, out: str) -> dict:
    """What `lm_eval --model M --model_args A --tasks tiny_pair --log_samples --output_path OUT` writes."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=out)
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=["tiny_pair", "tiny_ll"],
        task_manager=manager,
        log_samples=True,
        evaluation_tracker=tracker,
        verbosity="ERROR",
        bootstrap_iters=0,
    )
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    return results


def test_table_on_plain_lm_eval_log_samples_output(tmp_path, tiny_llama_dir, manager, one_torch_thread):
    import torch

    from steer_plugin.vectors.vector import SteeringVector

    vec = tmp_path / "anger-mean.safetensors"
    g = torch.Generator().manual_seed(0)
    SteeringVector(torch.randn(3, 32, generator=g) * 3, {"emotion": "anger", "method": "mean"}).save(vec)
    out = tmp_path / "out"
    base_args = f"pretrained={tiny_llama_dir},dtype=float32,device=cpu,batch_size=4"
    base = _lm_eval_run("hf", base_args, manager, str(out))
    steered = _lm_eval_run("steered_hf", f"{base_args},vector={vec},alpha=2", manager, str(out))
    folder = next(p for p in out.iterdir() if p.is_dir())  # lm_eval's per-model folder: both runs land in it
    results_files = sorted(folder.glob("results_*.json"))
    assert len(results_files) == 2 and len(list(folder.glob("samples_tiny_ll_*.jsonl"))) == 2
    for f in results_files:  # each results file finds its own samples files (same date id)
        date = f.stem.removeprefix("results_")
        assert samples_files(f, ["tiny_pair", "tiny_ll", "nope"]) == {
            t: folder / f"samples_{t}_{date}.jsonl" for t in ("tiny_pair", "tiny_ll")
        }

    # the reference: per-document values straight from the samples files, paired by doc_id
    def per_doc(model: str, task: str, metric: str) -> dict:
        f = next(f for f in results_files if json.loads(f.read_text())["config"]["model"] == model)
        lines = samples_files(f, [task])[task].read_text().splitlines()
        return {r["doc_id"]: r[metric] for r in map(json.loads, lines)}

    def reference(task: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        c, b = per_doc("steered_hf", task, metric), per_doc("hf", task, metric)
        assert sorted(c) == sorted(b) == list(range(len(DOCS)))
        return np.array([c[i] for i in range(len(DOCS))]), np.array([b[i] for i in range(len(DOCS))])

    c, b = reference("tiny_ll", "ll")
    assert np.abs(c - b).max() > 1e-3  # steering moved the loglikelihoods
    got = steered["results"]["tiny_ll"]["ll,none"] - base["results"]["tiny_ll"]["ll,none"]
    assert (c - b).mean() == pytest.approx(got, abs=1e-9)

    text, _ = write_table(out, tmp_path / "board")
    rows = {r.key["vector"]: r for r in load_rows(out)}
    assert set(rows) == {"-", "anger (mean)"}
    table = list(csv.DictReader(io.StringIO((tmp_path / "board.csv").read_text())))
    steered_row = next(r for r in table if r["vector"] == "anger (mean)")
    base_row = next(r for r in table if r["vector"] == "-")
    for col, (task, metric) in {"tiny_ll/ll": ("tiny_ll", "ll"), "tiny_pair/acc": ("tiny_pair", "acc")}.items():
        c, b = reference(task, metric)
        want = PairedBootstrap().compare(c, b)
        assert float(steered_row[col + "_delta"]) == pytest.approx((c - b).mean(), abs=1e-9)
        assert float(steered_row[col + "_ci_low"]) == pytest.approx(want.ci_low, abs=1e-9)
        assert float(steered_row[col + "_ci_high"]) == pytest.approx(want.ci_high, abs=1e-9)
        assert float(steered_row[col + "_p"]) == pytest.approx(want.p, abs=1e-9)
        for suffix in ("_delta", "_ci_low", "_ci_high", "_p"):
            assert base_row[col + suffix] == ""  # the baseline is not compared with itself
    assert steered_row["tiny_ll/perplexity_delta"] == ""  # not a mean over documents: no paired delta
    assert steered_row["tiny_ll/perplexity"] != ""
    want = PairedBootstrap().compare(*reference("tiny_pair", "acc"))
    assert "tiny_pair/acc Δ" in text and want.format() in text  # headline columns in the console / Markdown
    assert "tiny_pair/acc Δ" in (tmp_path / "board.md").read_text()

    # results files without their samples files: the cells stay empty, nothing breaks
    steered_file = next(f for f in results_files if json.loads(f.read_text())["config"]["model"] == "steered_hf")
    lone = tmp_path / "lone"
    lone.mkdir()
    for f in results_files:
        shutil.copy(f, lone / f"results_{'b' if f == steered_file else 'a'}.json")
    text, _ = write_table(lone, tmp_path / "lone_board")
    assert "Δ" not in text
    # the steered run's samples without the baseline's: said so, no deltas
    shutil.copy(samples_files(steered_file, ["tiny_ll"])["tiny_ll"], lone / "samples_tiny_ll_b.jsonl")
    assert "No Δ columns" in write_table(lone, tmp_path / "lone_board")[0]
    lone_csv = csv.DictReader(io.StringIO((tmp_path / "lone_board.csv").read_text()))
    assert all(r["tiny_ll/ll_delta"] == "" for r in lone_csv)


def test_read_scores_keeps_numeric_metrics_per_filter(tmp_path):
    f = tmp_path / "samples_t.jsonl"
    rows = [
        {
            "doc_id": 0,
            "doc_hash": "h0",
            "prompt_hash": "p",
            "filter": "none",
            "metrics": ["acc", "bleu"],
            "acc": 1.0,
            "bleu": [["ref"], "pred"],
        },
        {"doc_id": 0, "doc_hash": "h0", "prompt_hash": "p", "filter": "strict", "metrics": ["acc"], "acc": True},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"truncated')
    assert read_scores(f) == {"acc": {(0, "h0", "p"): 1.0}, "acc[strict]": {(0, "h0", "p"): 1.0}}
    old = tmp_path / "samples_old.jsonl"  # older harness rows have no "metrics" list
    old.write_text(json.dumps({"doc_id": 3, "doc": {"q": 1}, "target": 0, "filter": "none", "acc": 0}) + "\n")
    assert read_scores(old) == {"acc": {(3, None, None): 0.0}}


def test_lines_that_are_not_a_documents_scores_are_said_not_skipped_silently(tmp_path, capsys):
    f = tmp_path / "samples_t.jsonl"
    good = [{"doc_id": i, "filter": "none", "metrics": ["acc"], "acc": float(i % 2)} for i in range(4)]
    lines = [json.dumps(good[0]), "garbage", json.dumps(good[1]), json.dumps([1, 2]), json.dumps(good[2])]
    f.write_text("\n".join(lines) + "\n" + json.dumps(good[3])[:12])  # and a truncated last line
    got = read_scores(f)
    assert got == {"acc": {(r["doc_id"], None, None): r["acc"] for r in good[:3]}}  # the readable rows still count
    err = capsys.readouterr().err
    assert f"{f}: skipped 3 line(s) that are not a document's scores (line 2, 4, 6)" in err, err
    f.write_text("\n".join(json.dumps(r) for r in good) + "\n")
    read_scores(f)
    assert capsys.readouterr().err == ""  # a whole file: nothing to say
