"""Tables as text: aligned console tables and Markdown, one formatter for every command."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

MISSING = "-"  # the cell of a number that was not measured


def number_cell(x: float | None, spec: str = ".4g") -> str:
    """A number as a table cell: ``format(x, spec)``, an integer (a layer, a count) as it is, ``-`` when
    it is missing (None or NaN; numpy numbers included)."""
    if x is None or (isinstance(x, numbers.Real) and math.isnan(x)):
        return MISSING
    if isinstance(x, numbers.Integral):
        return str(int(x))
    return format(x, spec)


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    right: Sequence[bool] | None = None,
    markers: Sequence[str] | None = None,
    markdown: bool = False,
) -> str:
    """``rows`` under ``header``: aligned columns with a dashed rule (``right[i]``: right-align column i;
    ``markers``: a one-character flag before each row, e.g. ``*`` for the best one), or Markdown."""
    cells = [[str(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    align = list(right) if right is not None else [False] * len(header)

    def line(values: Sequence[str], mark: str = "") -> str:
        text = "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, align))
        return (mark + text if markers is not None else text).rstrip()

    pad = " " if markers is not None else ""
    out = [line(list(header), pad), line(["-" * w for w in widths], pad)]
    out += [line(r, markers[i] if markers is not None else "") for i, r in enumerate(cells)]
    return "\n".join(out)
