"""`steer analyze`: which layers and neurons separate a target emotion from a baseline class.

Everything is computed from the streamed statistics alone (count, mean, M2 per class), no raw
activations needed. Definitions, per layer l and neuron j (target T, baseline B):

* ``mean_diff = mean_T - mean_B``; ``abs_diff = |mean_diff|``.
* Welch's t: ``t = mean_diff / sqrt(var_T/n_T + var_B/n_B)`` (unbiased variances), with the
  Welch–Satterthwaite degrees of freedom; ``p_value`` is two-sided, ``2 * t.sf(|t|, df)``.
* Cohen's d: ``mean_diff / s_pooled`` with ``s_pooled = sqrt((M2_T + M2_B) / (n_T + n_B - 2))``.
* Zero-variance neurons (both classes constant, up to float64 rounding of the streamed means:
  SD <= 1e-12 x max(|mean_T|, |mean_B|)): if the means agree (same tolerance) t and d are NaN and
  p = 1 (no evidence of a difference); otherwise t and d are +-inf and p = 0. These neurons are
  counted in ``n_zero_var`` and left out of every per-layer statistic below except ``diff_norm``
  and ``cos_next``, so that one dead dimension cannot dominate a layer.

Per layer (``layers.csv``):

* ``diff_norm``: L2 norm of the mean-difference vector (the raw steering vector's length).
* ``separability``: Mahalanobis distance between the class means under a *diagonal* pooled
  covariance, ``sqrt(sum_j diff_j^2 / pooled_var_j)`` = the L2 norm of the Cohen's-d vector. It is
  what a diagonal-covariance LDA separates by; unlike ``diff_norm`` it does not grow just because a
  layer's activations get larger. Sampling noise inflates it: E[sep^2] ~ true^2 + m(1/n_T + 1/n_B)
  for m neurons, an offset that is the same for every layer (same m, same counts), so it ranks
  layers fairly but is not a calibrated distance on its own.
* ``max_abs_t``, ``max_abs_d``: largest |t| and |d| in the layer.
* ``n_sig_bonferroni``: neurons with ``p * m < alpha`` (Bonferroni within the layer, m = neurons
  tested in that layer); ``n_sig_bh``: neurons rejected by Benjamini–Hochberg at FDR ``alpha``
  within the layer. Correcting per layer matches how the table is read: one layer at a time.
* ``cos_next``: cosine between this layer's mean difference and the next layer's (NaN for the last
  layer or a zero vector): how stable the direction is along the residual stream.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steer_plugin.errors import SteerError
from steer_plugin.io.atomic import write_files_atomic
from steer_plugin.io.terminal import printable
from steer_plugin.io.text_table import format_table, number_cell
from steer_plugin.vectors import plots

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.vectors.stats import HiddenStateStats

DEFAULT_BASELINE = "neutral"
ALPHA = 0.05
# Relative tolerance below which a streamed SD (or mean difference) counts as zero: a constant
# neuron's float64 running mean carries a few ulp of error, which would otherwise look like a
# tiny variance and give an absurd t. Real activations vary far more than 1e-12 relative.
_ZERO_REL_TOL = 1e-12

RANKING_COLUMNS = (
    "layer",
    "neuron",
    "mean_diff",
    "abs_diff",
    "t",
    "df",
    "p_value",
    "cohens_d",
    "target_mean",
    "baseline_mean",
)
LAYER_COLUMNS = (
    "layer",
    "diff_norm",
    "separability",
    "max_abs_t",
    "max_abs_d",
    "n_sig_bonferroni",
    "n_sig_bh",
    "n_zero_var",
    "cos_next",
)
OUTPUT_FILES = {
    "ranking": "ranking.csv",
    "layers": "layers.csv",
    "heatmap": "heatmap.png",
    "topk_scatter": "topk_scatter.png",
    "layers_plot": "layers.png",
}


@dataclass
class NeuronStats:
    """Per-neuron comparison of two classes; every array is [L, H] float64."""

    mean_diff: np.ndarray
    t: np.ndarray
    df: np.ndarray
    p_value: np.ndarray
    cohens_d: np.ndarray
    target_mean: np.ndarray
    baseline_mean: np.ndarray
    zero_var: np.ndarray  # bool [L, H]: both classes constant (see module docstring)


@dataclass
class LayerSummary:
    layer: int
    diff_norm: float
    separability: float
    max_abs_t: float
    max_abs_d: float
    n_sig_bonferroni: int
    n_sig_bh: int
    n_zero_var: int
    cos_next: float

    def row(self) -> list[Any]:
        return [getattr(self, c) for c in LAYER_COLUMNS]


@dataclass
class AnalysisResult:
    target: str
    baseline: str
    model: str | None
    n_target: int
    n_baseline: int
    layers: np.ndarray  # [L] layer labels (block indices)
    neurons: NeuronStats
    layer_summaries: list[LayerSummary]
    files: list[Path] = field(default_factory=list)  # written outputs, in OUTPUT_FILES order

    @property
    def best_layer(self) -> int:
        """Layer with the highest separability (ties: the earliest)."""
        seps = np.array([s.separability for s in self.layer_summaries])
        i = int(np.nanargmax(seps)) if np.isfinite(seps).any() else 0
        return int(self.layers[i])

    def title(self) -> str:
        base = f"{self.target} vs {self.baseline}"
        # names come from the stats file: shown escaped in the console and the plots
        return printable(f"{self.model}: {base}" if self.model else base)


# ----------------------------------------------------------------------------- computation


def compare_classes(
    n_t: int, mean_t: np.ndarray, m2_t: np.ndarray, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray
) -> NeuronStats:
    """Welch's t-test and Cohen's d, vectorised over [L, H], from count / mean / M2."""
    from scipy.stats import t as t_dist

    mean_t, m2_t = np.asarray(mean_t, np.float64), np.asarray(m2_t, np.float64)
    mean_b, m2_b = np.asarray(mean_b, np.float64), np.asarray(m2_b, np.float64)
    var_t, var_b = m2_t / (n_t - 1), m2_b / (n_b - 1)
    diff = mean_t - mean_b

    tol = _ZERO_REL_TOL * np.maximum(np.abs(mean_t), np.abs(mean_b))
    zero_var = (np.sqrt(var_t) <= tol) & (np.sqrt(var_b) <= tol)
    same = zero_var & (np.abs(diff) <= tol)
    differ = zero_var & ~same

    a_t, a_b = var_t / n_t, var_b / n_b
    se2 = a_t + a_b
    pooled_sd = np.sqrt((m2_t + m2_b) / (n_t + n_b - 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(zero_var, np.nan, diff / np.sqrt(se2))
        df = np.where(zero_var, np.nan, se2**2 / (a_t**2 / (n_t - 1) + a_b**2 / (n_b - 1)))
        d = np.where(zero_var, np.nan, diff / pooled_sd)
    inf = np.copysign(np.inf, diff)
    t = np.where(differ, inf, t)
    d = np.where(differ, inf, d)

    p = np.ones_like(diff)
    ok = ~zero_var
    p[ok] = 2.0 * t_dist.sf(np.abs(t[ok]), df[ok])
    p[differ] = 0.0
    return NeuronStats(diff, t, df, np.minimum(p, 1.0), d, mean_t, mean_b, zero_var)


def _bh_count(p: np.ndarray, alpha: float) -> int:
    """Number of Benjamini–Hochberg rejections among p-values ``p`` at FDR ``alpha``."""
    m = p.size
    if m == 0:
        return 0
    below = np.sort(p) <= alpha * np.arange(1, m + 1) / m
    return int(np.flatnonzero(below)[-1] + 1) if below.any() else 0


def summarize_layers(neurons: NeuronStats, layers: np.ndarray, alpha: float = ALPHA) -> list[LayerSummary]:
    diff = neurons.mean_diff
    norms = np.linalg.norm(diff, axis=1)
    out = []
    for i in range(diff.shape[0]):
        ok = ~neurons.zero_var[i]
        t, d, p = neurons.t[i][ok], neurons.cohens_d[i][ok], neurons.p_value[i][ok]
        m = int(ok.sum())
        if i + 1 < diff.shape[0] and norms[i] > 0 and norms[i + 1] > 0:
            cos = float(diff[i] @ diff[i + 1] / (norms[i] * norms[i + 1]))
        else:
            cos = float("nan")
        out.append(
            LayerSummary(
                layer=int(layers[i]),
                diff_norm=float(norms[i]),
                separability=float(np.sqrt(np.sum(d**2))),
                max_abs_t=float(np.max(np.abs(t))) if m else float("nan"),
                max_abs_d=float(np.max(np.abs(d))) if m else float("nan"),
                n_sig_bonferroni=int(np.sum(p * m < alpha)),
                n_sig_bh=_bh_count(p, alpha),
                n_zero_var=int(diff.shape[1] - m),
                cos_next=cos,
            )
        )
    return out


def ranking_order(mean_diff: np.ndarray) -> np.ndarray:
    """Flat (layer-major) indices sorted by |mean_diff| descending; ties keep layer, neuron order."""
    return np.argsort(-np.abs(mean_diff).ravel(), kind="stable")


# ----------------------------------------------------------------------------- entry point


def _resolve_classes(stats: HiddenStateStats, target: str | None, baseline: str | None):
    meta = stats.metadata or {}
    target = target or meta.get("target")
    baseline = baseline or meta.get("baseline") or DEFAULT_BASELINE
    if not target:
        raise SteerError(
            f"no target class given and the stats metadata names none; choose one of: {', '.join(stats.classes)}"
        )
    if target == baseline:
        raise SteerError(f"target and baseline are the same class ({target!r}); pick two different ones")
    t_cls, b_cls = stats.get(target), stats.get(baseline)
    for name, cls in ((target, t_cls), (baseline, b_cls)):
        if cls.count < 2:
            raise SteerError(f"class {name!r} has {cls.count} sample(s); Welch's t-test needs at least 2 per class")
    return str(target), str(baseline), t_cls, b_cls


def analyze(
    stats: HiddenStateStats,
    target: str | None = None,
    baseline: str | None = None,
    out_dir: str | os.PathLike | None = None,
    top_k: int = 20,
    top_n_rows: int | None = None,
    alpha: float = ALPHA,
) -> AnalysisResult:
    """Compare ``target`` against ``baseline`` and (if ``out_dir``) write the CSVs and plots.

    ``target`` defaults to the stats metadata's ``target``; ``baseline`` to its ``baseline``, else
    ``"neutral"``. ``top_k`` neurons per layer go into the scatter plot; ``top_n_rows`` limits
    ranking.csv (the arrays in the result stay complete). Outputs are rendered in memory first, so
    bad input raises before anything is written, then written as one set: if writing fails (a full
    disk), none of them is, and the previous set stays.
    """
    if top_k < 1:
        raise SteerError(f"top_k must be a positive integer, got {top_k}")
    if top_n_rows is not None and top_n_rows < 1:
        raise SteerError(f"top_n_rows must be a positive integer or unset, got {top_n_rows}")
    if not 0 < alpha < 1:
        raise SteerError(f"alpha must be in (0, 1), got {alpha}")
    target, baseline, t_cls, b_cls = _resolve_classes(stats, target, baseline)
    meta = stats.metadata or {}

    neurons = compare_classes(
        t_cls.count, t_cls.mean.numpy(), t_cls.m2.numpy(), b_cls.count, b_cls.mean.numpy(), b_cls.m2.numpy()
    )
    layers = np.arange(neurons.mean_diff.shape[0])  # row i = output of decoder block i
    model = meta.get("model")
    result = AnalysisResult(
        target=target,
        baseline=baseline,
        model=str(model) if model else None,
        n_target=t_cls.count,
        n_baseline=b_cls.count,
        layers=layers,
        neurons=neurons,
        layer_summaries=summarize_layers(neurons, layers, alpha),
    )
    if out_dir is not None:
        _write_outputs(result, Path(out_dir), top_k, top_n_rows)
    return result


# ----------------------------------------------------------------------------- outputs


def _csv_text(header: tuple[str, ...], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def ranking_csv(result: AnalysisResult, top_n_rows: int | None = None) -> str:
    n = result.neurons
    order = ranking_order(n.mean_diff)
    if top_n_rows is not None:
        order = order[:top_n_rows]
    n_neurons = n.mean_diff.shape[1]
    li, ni = np.divmod(order, n_neurons)
    cols = [
        result.layers[li].tolist(),
        ni.tolist(),
        *(
            a.ravel()[order].tolist()  # Python floats: repr round-trips, inf/nan as text
            for a in (n.mean_diff, np.abs(n.mean_diff), n.t, n.df, n.p_value, n.cohens_d)
        ),
        n.target_mean.ravel()[order].tolist(),
        n.baseline_mean.ravel()[order].tolist(),
    ]
    return _csv_text(RANKING_COLUMNS, zip(*cols))


def layers_csv(result: AnalysisResult) -> str:
    return _csv_text(LAYER_COLUMNS, (s.row() for s in result.layer_summaries))


def _write_outputs(result: AnalysisResult, out_dir: Path, top_k: int, top_n_rows: int | None) -> None:
    title = result.title()
    payloads: dict[str, bytes] = {
        "ranking": ranking_csv(result, top_n_rows).encode(),
        "layers": layers_csv(result).encode(),
        "heatmap": plots.heatmap_png(result.neurons.mean_diff, result.layers, title),
        "topk_scatter": plots.topk_scatter_png(result.neurons.mean_diff, result.layers, top_k, title),
        "layers_plot": plots.layers_png(
            [s.layer for s in result.layer_summaries],
            [s.diff_norm for s in result.layer_summaries],
            [s.separability for s in result.layer_summaries],
            title,
        ),
    }
    # all-or-nothing: a half-written set of outputs would mix this run with an older one
    result.files = write_files_atomic({out_dir / OUTPUT_FILES[key]: data for key, data in payloads.items()})


# ----------------------------------------------------------------------------- console table


def format_layer_table(result: AnalysisResult, max_rows: int | None = None) -> str:
    """Per-layer summary as an aligned plain-text table.

    With ``max_rows`` below the number of layers, the ``max_rows`` most separable layers are shown
    (still in layer order) and a footer says so.
    """
    rows = result.layer_summaries
    shown = rows
    if max_rows is not None and 0 <= max_rows < len(rows):
        seps = np.array([s.separability for s in rows])
        keep = np.argsort(-np.nan_to_num(seps, nan=-np.inf), kind="stable")[:max_rows]
        shown = [rows[i] for i in sorted(keep)]
    headers = ("layer", "diff_norm", "separab.", "max|t|", "max|d|", "sig_bonf", "sig_bh", "zero_var", "cos_next")
    best = result.best_layer
    table = format_table(
        headers,
        [[number_cell(v) for v in s.row()] for s in shown],
        right=[True] * len(headers),
        markers=["*" if s.layer == best else " " for s in shown],
    )
    out = [f"{result.title()}  (n_target={result.n_target}, n_baseline={result.n_baseline})", table]
    if len(shown) < len(rows):
        out.append(f"(showing the {len(shown)} most separable of {len(rows)} layers)")
    out.append(f"* most separable layer: {best}")
    return "\n".join(out)
