"""PNG plots for `steer analyze` (see ``io.figures``: rendered in memory, returned as bytes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from steer_plugin.io.figures import new_figure, png_bytes

# A handful of huge "massive activation" dimensions would wash out the colour scale otherwise.
HEATMAP_CLIP_PERCENTILE = 99.5


def _layer_ticks(ax, layers: np.ndarray, axis: str = "y", max_ticks: int = 32) -> None:
    step = max(1, int(np.ceil(len(layers) / max_ticks)))
    pos = np.arange(len(layers))[::step]
    setter, labeller = (ax.set_yticks, ax.set_yticklabels) if axis == "y" else (ax.set_xticks, ax.set_xticklabels)
    setter(pos)
    labeller([str(int(x)) for x in layers[::step]])


def heatmap_png(mean_diff: np.ndarray, layers: np.ndarray, title: str) -> bytes:
    """Layers x neurons, each layer's differences sorted ascending; diverging colours centred at 0."""
    n_layers, hidden = mean_diff.shape
    sorted_diff = np.sort(mean_diff, axis=1)
    lim = float(np.percentile(np.abs(mean_diff), HEATMAP_CLIP_PERCENTILE)) if mean_diff.size else 0.0
    lim = lim if lim > 0 else 1.0
    fig = new_figure(10, min(12.0, 2.5 + 0.22 * n_layers))
    ax = fig.add_subplot()
    im = ax.imshow(
        sorted_diff, aspect="auto", interpolation="nearest", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower"
    )
    _layer_ticks(ax, layers, "y")
    ax.set_xlabel(f"neuron rank within layer (sorted by mean difference, {hidden} neurons)")
    ax.set_ylabel("layer")
    ax.set_title(f"{title}: sorted mean difference per layer")
    cbar = fig.colorbar(im, ax=ax, extend="both")
    cbar.set_label(f"mean difference (clipped at {HEATMAP_CLIP_PERCENTILE:g}th pct of |diff|)")
    return png_bytes(fig)


def topk_scatter_png(mean_diff: np.ndarray, layers: np.ndarray, k: int, title: str) -> bytes:
    """For every layer, the k largest-|diff| neurons' mean differences, coloured by sign."""
    n_layers, hidden = mean_diff.shape
    k = min(k, hidden)
    idx = np.argsort(-np.abs(mean_diff), axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(mean_diff, idx, axis=1)
    xs = np.repeat(layers.astype(float), k).reshape(n_layers, k)
    fig = new_figure(10, 5)
    ax = fig.add_subplot()
    pos = vals > 0
    ax.scatter(xs[pos], vals[pos], s=14, c="tab:red", alpha=0.7, label="target > baseline")
    ax.scatter(xs[~pos], vals[~pos], s=14, c="tab:blue", alpha=0.7, label="target < baseline")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean difference")
    ax.set_title(f"{title}: top {k} |mean difference| neurons per layer")
    ax.legend(loc="best", fontsize="small")
    return png_bytes(fig)


def layers_png(
    layer_ids: Sequence[int], diff_norms: Sequence[float], separability: Sequence[float], title: str
) -> bytes:
    """Two panels over layers: difference norm and diagonal-Mahalanobis separability."""
    layers = np.array(layer_ids, dtype=float)
    norms = np.array(diff_norms, dtype=float)
    seps = np.array(separability, dtype=float)
    fig = new_figure(9, 6)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(layers, norms, marker="o", ms=3, color="tab:purple")
    ax1.set_ylabel("L2 norm of\nmean difference")
    ax1.set_title(f"{title}: per-layer difference norm and separability")
    ax2.plot(layers, seps, marker="o", ms=3, color="tab:green")
    ax2.set_ylabel("separability\n(diag. Mahalanobis)")
    ax2.set_xlabel("layer")
    if np.isfinite(seps).any():
        best = layers[int(np.nanargmax(seps))]
        for ax in (ax1, ax2):
            ax.axvline(best, color="0.4", ls="--", lw=0.8)
        ax2.annotate(f"best: {int(best)}", (best, np.nanmax(seps)), xytext=(4, -12), textcoords="offset points")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return png_bytes(fig)
