"""The picture of a tuning: robust Δ and degenerate rate over layer range x KL budget, the chosen cell boxed,
the prompting reference beside the grid for scale (``<vector>.tuning.png``, next to the tuning file)."""

from __future__ import annotations

import math
from pathlib import Path

from steer_plugin.study.tuning_file import Tuning


def tuning_picture_path(vector_path: str | Path) -> Path:
    """``anger-mean.safetensors`` -> ``anger-mean.tuning.png`` (same folder)."""
    p = Path(vector_path)
    return p.with_name(p.stem + ".tuning.png")


def _grid(tuning: Tuning, attr: str) -> tuple[list[str], list[float], list[list[float]]]:
    layers = list(dict.fromkeys(c.layers for c in tuning.cells))
    budgets = sorted({c.kl_budget for c in tuning.cells})
    values = [[math.nan] * len(budgets) for _ in layers]
    for c in tuning.cells:
        value = getattr(c, attr)
        values[layers.index(c.layers)][budgets.index(c.kl_budget)] = math.nan if value is None else float(value)
    return layers, budgets, values


def plot_tuning(tuning: Tuning, title: str) -> bytes:
    """Two heatmaps (robust Δ, degenerate rate), rows the layer ranges, columns the KL budgets, and a last column
    ``asking`` with the prompting reference; the chosen cell boxed. PNG bytes."""
    import numpy as np
    from matplotlib.patches import Rectangle

    from steer_plugin.io.figures import new_figure, png_bytes

    ref = tuning.reference or {}
    layers, budgets, deltas = _grid(tuning, "robust_delta")
    _, _, rates = _grid(tuning, "degenerate_rate")
    ref_delta, ref_rate = ref.get("robust_delta"), ref.get("degenerate_rate")
    panels = [
        ("robust Δ target prob. (fluent in both arms)", deltas, ref_delta, "RdBu", "{:+.3f}"),
        (f"degenerate rate (baseline {tuning.baseline_degenerate_rate:.0%}, limit +10 pts)", rates, ref_rate,
         "Greys", "{:.0%}"),
    ]  # fmt: skip
    fig = new_figure(4.0 + 2.2 * (len(budgets) + 1), 1.6 + 0.45 * len(layers))
    axes = fig.subplots(1, 2)
    for ax, (name, values, reference, cmap, fmt) in zip(axes, panels, strict=True):
        grid = np.array([[*row, math.nan] for row in values], dtype=float)
        if reference is not None:
            grid[0, -1] = float(reference)  # the reference: one cell, in the first row of the `asking` column
        finite = grid[np.isfinite(grid)]
        if cmap == "RdBu":
            top = float(np.max(np.abs(finite))) if finite.size else 1.0
            image = ax.imshow(grid, cmap=cmap, vmin=-(top or 1.0), vmax=top or 1.0, aspect="auto")
        else:
            image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        fig.colorbar(image, ax=ax, shrink=0.8)
        for (i, j), v in np.ndenumerate(grid):
            if math.isfinite(v):
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="black",
                        bbox={"facecolor": "white", "alpha": 0.6, "linewidth": 0, "pad": 1})  # fmt: skip
        ax.set_xticks(range(len(budgets) + 1), [f"kl:{b:g}" for b in budgets] + ["asking"])
        ax.set_yticks(range(len(layers)), layers)
        ax.set_xlabel("KL budget; asking: the prompting reference", fontsize=8)
        ax.set_ylabel("layers")
        ax.set_title(name, fontsize=9)
        if tuning.choice is not None:
            i, j = layers.index(tuning.choice.layers), budgets.index(tuning.choice.kl_budget)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="gold", linewidth=3))
    chosen = "nothing chosen" if tuning.choice is None else (
        f"chosen: layers {tuning.choice.layers} at kl:{tuning.choice.kl_budget:g}"
    )  # fmt: skip
    fig.suptitle(f"{title}: {chosen} (dev prompts; boxed)", fontsize=10)
    return png_bytes(fig)
