"""`steer analyze`: statistics from streamed stats vs scipy/numpy on the raw samples, and outputs."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from steer_plugin.errors import SteerError
from steer_plugin.vectors.analysis import (
    LAYER_COLUMNS,
    OUTPUT_FILES,
    RANKING_COLUMNS,
    analyze,
    format_layer_table,
)
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats
from tests.helpers.cli import no_controls as _no_controls
from tests.helpers.cli import run_cli

L, H = 4, 24
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _class_stats(x: np.ndarray, batch: int = 7) -> ClassStats:
    """Streamed in uneven batches, as the recorder does, so the Chan merge path is exercised."""
    cs = ClassStats.empty(x.shape[1], x.shape[2])
    for i in range(0, len(x), batch):
        cs.update(torch.from_numpy(x[i : i + batch]))
    return cs


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    shift = rng.normal(0, 0.4, size=(L, H))
    shift[2, :5] = [3.0, -2.5, 2.0, -1.5, 1.0]  # a layer with clearly separated neurons
    scale_t = rng.uniform(0.5, 2.0, size=(L, H))  # unequal variances: Welch, not Student
    return {
        "anger": rng.normal(shift, scale_t, size=(41, L, H)),
        "neutral": rng.normal(0.0, 1.0, size=(58, L, H)),
        "joy": rng.normal(0.1, 1.0, size=(9, L, H)),
    }


@pytest.fixture(scope="module")
def stats(raw) -> HiddenStateStats:
    return HiddenStateStats(
        {k: _class_stats(v) for k, v in raw.items()},
        {"model": "tiny-llama", "target": "anger", "baseline": "neutral"},
    )


def _cohens_d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = len(a), len(b)
    pooled = ((na - 1) * a.var(0, ddof=1) + (nb - 1) * b.var(0, ddof=1)) / (na + nb - 2)
    return (a.mean(0) - b.mean(0)) / np.sqrt(pooled)


def test_neuron_stats_match_scipy_on_raw_samples(stats, raw):
    res = analyze(stats, "anger", "neutral")
    a, b = raw["anger"], raw["neutral"]
    ref = sps.ttest_ind(a, b, axis=0, equal_var=False)
    n = res.neurons
    np.testing.assert_allclose(n.mean_diff, a.mean(0) - b.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(n.t, ref.statistic, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(n.df, ref.df, rtol=1e-10)
    np.testing.assert_allclose(n.p_value, ref.pvalue, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(n.cohens_d, _cohens_d(a, b), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(n.target_mean, a.mean(0), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(n.baseline_mean, b.mean(0), rtol=1e-12, atol=1e-13)
    assert (res.n_target, res.n_baseline) == (41, 58)
    assert not n.zero_var.any()


def test_layer_summaries_match_independent_reference(stats, raw):
    res = analyze(stats, "anger", "neutral")
    a, b = raw["anger"], raw["neutral"]
    diff = a.mean(0) - b.mean(0)
    p = sps.ttest_ind(a, b, axis=0, equal_var=False).pvalue
    assert [s.layer for s in res.layer_summaries] == list(range(L))
    for layer, s in enumerate(res.layer_summaries):
        # Mahalanobis distance with the diagonal of the pooled within-class covariance.
        centred = np.concatenate([a[:, layer] - a[:, layer].mean(0), b[:, layer] - b[:, layer].mean(0)])
        pooled_var = np.diag(centred.T @ centred) / (len(a) + len(b) - 2)
        maha = math.sqrt(diff[layer] @ np.diag(1 / pooled_var) @ diff[layer])
        assert s.separability == pytest.approx(maha, rel=1e-10)
        assert s.diff_norm == pytest.approx(np.linalg.norm(diff[layer]), rel=1e-12)
        t = sps.ttest_ind(a[:, layer], b[:, layer], axis=0, equal_var=False).statistic
        assert s.max_abs_t == pytest.approx(np.abs(t).max(), rel=1e-10)
        assert s.max_abs_d == pytest.approx(np.abs(_cohens_d(a, b)[layer]).max(), rel=1e-10)
        assert s.n_sig_bonferroni == int((p[layer] < 0.05 / H).sum())
        assert s.n_sig_bh == int((sps.false_discovery_control(p[layer]) <= 0.05).sum())
        assert s.n_zero_var == 0
        if layer + 1 < L:
            cos = diff[layer] @ diff[layer + 1] / np.linalg.norm(diff[layer]) / np.linalg.norm(diff[layer + 1])
            assert s.cos_next == pytest.approx(cos, rel=1e-10)
        else:
            assert math.isnan(s.cos_next)
    # The planted layer must come out on top and have significant neurons.
    assert res.best_layer == 2
    assert res.layer_summaries[2].n_sig_bonferroni >= 4


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_writes_all_outputs(stats, tmp_path, raw):
    out = tmp_path / "analysis"
    res = analyze(stats, out_dir=out, top_k=5)  # target/baseline from the stats metadata
    assert (res.target, res.baseline, res.model) == ("anger", "neutral", "tiny-llama")
    assert res.files == [out / name for name in OUTPUT_FILES.values()]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES.values())  # no temp files
    for key in ("heatmap", "topk_scatter", "layers_plot"):
        data = (out / OUTPUT_FILES[key]).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, key

    header, rows = _read_csv(out / "ranking.csv")
    assert tuple(header) == RANKING_COLUMNS
    assert len(rows) == L * H
    col = {name: i for i, name in enumerate(header)}
    abs_diff = [float(r[col["abs_diff"]]) for r in rows]
    assert abs_diff == sorted(abs_diff, reverse=True)
    # Independent ordering: numpy on the raw samples.
    diff = raw["anger"].mean(0) - raw["neutral"].mean(0)
    expect = np.argsort(-np.abs(diff).ravel(), kind="stable")
    got = [int(r[col["layer"]]) * H + int(r[col["neuron"]]) for r in rows]
    assert got == expect.tolist()
    for r in rows[:10]:
        li, ni = int(r[col["layer"]]), int(r[col["neuron"]])
        assert float(r[col["mean_diff"]]) == res.neurons.mean_diff[li, ni]  # repr round-trips
        assert float(r[col["p_value"]]) == res.neurons.p_value[li, ni]
        assert float(r[col["cohens_d"]]) == res.neurons.cohens_d[li, ni]

    header, rows = _read_csv(out / "layers.csv")
    assert tuple(header) == LAYER_COLUMNS
    assert [int(r[0]) for r in rows] == list(range(L))
    assert float(rows[2][header.index("separability")]) == res.layer_summaries[2].separability


def test_top_n_rows_truncates_ranking_only(stats, tmp_path):
    full = analyze(stats, "anger", out_dir=tmp_path / "full")
    top = analyze(stats, "anger", out_dir=tmp_path / "top", top_n_rows=7)
    _, full_rows = _read_csv(full.files[0])
    _, top_rows = _read_csv(top.files[0])
    assert top_rows == full_rows[:7]
    assert top.neurons.mean_diff.shape == (L, H)


def test_unknown_class_lists_classes_and_writes_nothing(stats, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(SteerError, match=r"'fear'.*anger, neutral, joy"):
        analyze(stats, "fear", out_dir=out)
    with pytest.raises(SteerError, match="'calm'"):
        analyze(stats, "anger", "calm", out_dir=out)
    assert not out.exists()


def test_missing_target_without_metadata_is_an_error(raw):
    s = HiddenStateStats({k: _class_stats(v) for k, v in raw.items()})
    with pytest.raises(SteerError, match="no target class"):
        analyze(s)
    with pytest.raises(SteerError, match="same class"):
        analyze(s, "neutral")
    res = analyze(s, "joy")
    assert res.model is None and res.title() == "joy vs neutral"


def test_too_few_samples_is_an_error(raw):
    s = HiddenStateStats({"anger": _class_stats(raw["anger"][:1]), "neutral": _class_stats(raw["neutral"])})
    with pytest.raises(SteerError, match="at least 2"):
        analyze(s, "anger")


def test_failure_while_writing_leaves_no_files(stats, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_FILES["heatmap"]).mkdir()  # writing onto a directory fails after the CSVs
    with pytest.raises(SteerError, match="heatmap.png is a folder"):  # found by atomic_path's output check
        analyze(stats, "anger", out_dir=out)
    assert [p.name for p in out.iterdir()] == [OUTPUT_FILES["heatmap"]]


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, constant column
def test_zero_variance_neurons():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(30, 1, 6))
    b = rng.normal(size=(25, 1, 6))
    a[:, 0, 0] = b[:, 0, 0] = 0.1  # same constant: streamed mean carries rounding noise
    a[:, 0, 1], b[:, 0, 1] = 2.0, -1.0  # different constants
    b[:, 0, 2] = 0.5  # only one class constant: Welch is still well defined
    res = analyze(HiddenStateStats({"x": _class_stats(a), "y": _class_stats(b)}), "x", "y")
    n = res.neurons
    assert math.isnan(n.t[0, 0]) and n.p_value[0, 0] == 1.0 and math.isnan(n.cohens_d[0, 0])
    assert n.t[0, 1] == math.inf and n.p_value[0, 1] == 0.0 and n.cohens_d[0, 1] == math.inf
    assert n.zero_var[0].tolist() == [True, True, False, False, False, False]
    ref = sps.ttest_ind(a[:, 0, 2:], b[:, 0, 2:], axis=0, equal_var=False)
    np.testing.assert_allclose(n.t[0, 2:], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(n.p_value[0, 2:], ref.pvalue, rtol=1e-9, atol=1e-14)
    s = res.layer_summaries[0]
    assert s.n_zero_var == 2
    assert math.isfinite(s.separability) and math.isfinite(s.max_abs_t)
    assert s.separability == pytest.approx(np.linalg.norm(_cohens_d(a[:, 0, 2:], b[:, 0, 2:])), rel=1e-10)


def test_layer_table(stats):
    res = analyze(stats, "anger")
    text = format_layer_table(res)
    lines = text.splitlines()
    assert "tiny-llama: anger vs neutral" in lines[0]
    table = lines[1 : 3 + L]
    assert "separab." in table[0] and len({len(x) for x in table}) == 1  # aligned columns
    assert [ln[1:].split()[0] for ln in table[2:]] == [str(i) for i in range(L)]
    assert table[2 + res.best_layer].startswith("*")

    short = format_layer_table(res, max_rows=2).splitlines()
    seps = [s.separability for s in res.layer_summaries]
    top2 = sorted(np.argsort(seps)[::-1][:2].tolist())
    assert [ln[1:].split()[0] for ln in short[3:5]] == [str(i) for i in top2]
    assert "2 most separable of 4" in short[5]


def test_stats_file_round_trip_and_ekman_names(raw, tmp_path):
    s = HiddenStateStats(
        {"ekman:anger": _class_stats(raw["anger"]), "ekman:neutral": _class_stats(raw["neutral"])},
        {"target": "ekman:anger", "baseline": "ekman:neutral"},
    )
    s.save(tmp_path / "s.safetensors")
    res = analyze(HiddenStateStats.load(tmp_path / "s.safetensors"), out_dir=tmp_path / "o", top_k=100)
    assert (res.target, res.baseline) == ("ekman:anger", "ekman:neutral")
    assert (tmp_path / "o" / "topk_scatter.png").read_bytes().startswith(PNG_MAGIC)  # top_k > H is clamped


def test_analyze_escapes_control_characters(stats_file_for_build, tmp_path, capsys):
    code, out, _ = run_cli(["analyze", stats_file_for_build, "--emotion", "anger", "--out", tmp_path / "a"], capsys)
    assert code == 0
    _no_controls(out)
    assert "tiny\\x1b[31mred" in out
