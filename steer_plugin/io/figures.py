"""Figures rendered in memory with matplotlib's Agg backend.

Figures are built with ``matplotlib.figure.Figure`` + ``FigureCanvasAgg`` rather than pyplot, so no global
backend switch or figure registry is touched (safe inside notebooks and threads); callers get PNG bytes and
write them atomically.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
