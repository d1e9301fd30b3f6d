"""Layer specs: ``all`` or a comma list of 0-based indices and ranges, e.g. ``0,3,5-9``."""

from __future__ import annotations

from steer_plugin.errors import SteerError


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """Sorted unique 0-based layer indices; ``None``/``all`` means every layer."""
    if spec is None or str(spec).strip().lower() in ("", "all"):
        return list(range(n_layers))
    out: set[int] = set()
    for part in str(spec).replace(";", ",").split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise SteerError(
                f"bad layer spec {spec!r}: use 'all' or 0-based indices and ranges like '0,3,5-9'"
            ) from None
    bad = sorted(i for i in out if not 0 <= i < n_layers)
    if bad:
        raise SteerError(f"layer(s) {bad} out of range: this model has layers 0-{n_layers - 1}")
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
