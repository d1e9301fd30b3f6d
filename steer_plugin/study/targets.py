"""What a `steer run` is asked for, in its own words: the emotions (``--emotion``), the name of the folder they
are written to, and the leakage level (``--leakage-budget``), checked against the grid before any work starts."""

from __future__ import annotations

import math

from steer_plugin.data.goemotions import EKMAN, EKMAN_PREFIX, LABELS, canonical_target, target_slug
from steer_plugin.errors import SteerError

NEUTRAL = "neutral"


def parse_targets(spec: str) -> list[str]:
    """``anger`` / ``anger,joy,sadness`` / ``all`` (the 27 emotions) / ``ekman`` (the 6 groups) → class names."""
    key = spec.strip().lower()
    if key == "all":
        return [label for label in LABELS if label != NEUTRAL]
    if key == "ekman":
        return [EKMAN_PREFIX + g for g in EKMAN]
    names = [canonical_target(part) for part in spec.split(",") if part.strip()]
    if not names:
        raise SteerError(f"--emotion {spec!r} names no emotion; give e.g. anger, anger,joy,sadness, all or ekman")
    return list(dict.fromkeys(names))


def run_folder_name(spec: str, targets: list[str]) -> str:
    """``anger`` for one target (as before), ``all``/``ekman``, else the targets joined: ``anger-joy``."""
    key = spec.strip().lower()
    if len(targets) > 1 and key in ("all", "ekman"):
        return key
    return "-".join(target_slug(t) for t in targets)


def check_level(level: float | None, alphas: list) -> None:
    """A --leakage-budget that the grid (``0,kl:0.1,...`` or plain alphas) does not contain is an error."""
    if level is None:
        return
    levels = [float(getattr(a, "kl", a)) for a in alphas if getattr(a, "kl", a)]
    if not any(math.isclose(x, level, rel_tol=1e-6) for x in levels):
        have = ", ".join(f"{x:g}" for x in levels) or "none"
        raise SteerError(f"--leakage-budget {level:g} is not in --alphas; the steered budgets/alphas are {have}")
