"""Layer specs: ``all``, ``middle`` (the middle third of the blocks: 10-19 of 30) or a comma list of 0-based
indices and ranges, e.g. ``0,3,5-9``."""

from __future__ import annotations

from steer_plugin.errors import SteerError

MIDDLE = "middle"


def middle_layers(n_layers: int) -> list[int]:
    """The middle third of ``n_layers`` blocks (all of them below 3): `steer run`'s default, measured against
    all layers at equal KL on SmolLM2 (docs/findings.md, "Choosing the defaults")."""
    third = n_layers // 3
    return list(range(third, n_layers - third))


def layer_ranges(spec: str | None) -> list[tuple[int, int]] | None:
    """The spec's (lo, hi) pieces, syntax checked; ``None`` for ``all`` and ``middle`` (which needs the model's
    depth). Needs no model (and never expands a range: ``0-999999999999`` is two numbers, not a trillion). A blank
    spec (``--layers ''``) is a mistake, not a silent ``all``; ``None`` is all."""
    if spec is not None and not str(spec).strip():
        raise SteerError(f"--layers {str(spec)!r} names no layers; use all, middle or e.g. 10-19")
    if spec is None or str(spec).strip().lower() in ("all", MIDDLE):
        return None
    pieces = []
    for part in str(spec).replace(";", ",").split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
            else:
                lo = hi = int(part)
        except ValueError:
            raise SteerError(
                f"bad layer spec {spec!r}: use 'all', 'middle' or 0-based indices and ranges like '0,3,5-9'"
            ) from None
        pieces.append((lo, hi))
    return pieces


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """Sorted unique 0-based layer indices; ``None``/``all`` means every layer."""
    if spec is not None and str(spec).strip().lower() == MIDDLE:
        return middle_layers(n_layers)
    pieces = layer_ranges(spec)
    if pieces is None:
        return list(range(n_layers))
    out: set[int] = set()
    bad: list[int] = []
    for lo, hi in pieces:
        if lo < 0 or hi >= n_layers:
            # the first few offenders and the last one: enough to see the mistake, never a huge list
            bad += [i for i in [*range(lo, min(hi, lo + 15) + 1), hi] if not 0 <= i < n_layers]
        else:
            out.update(range(lo, hi + 1))
    if bad:
        shown = sorted(set(bad))
        raise SteerError(f"layer(s) {shown} out of range: this model has layers 0-{n_layers - 1}")
    return sorted(out)


def format_layers(layers: list[int], n_layers: int) -> str:
    """Inverse of parse_layers, compact: ``0-3,7``."""
    if layers == list(range(n_layers)):
        return "all"
    parts, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(parts)
