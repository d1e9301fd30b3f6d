"""Alphas as the command line gives them: numbers, and KL budgets (``kl:0.1``) that calibration turns into alphas.

Light (no torch): `steer sweep --alphas kl:0.1` parses them while the arguments are read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from steer_plugin.errors import SteerError


@dataclass(frozen=True)
class KLBudget:
    """An alpha given as a side-effect budget: ``kl:0.1`` = the alpha whose KL is 0.1 nats/token."""

    kl: float

    def __str__(self) -> str:
        return f"kl:{self.kl:g}"


AlphaSpec = float | KLBudget


def parse_alpha_specs(text: str) -> list[AlphaSpec]:
    """``0,0.5,kl:0.1`` -> [0.0, 0.5, KLBudget(0.1)] (``;`` also separates)."""
    out: list[AlphaSpec] = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if part.lower().startswith("kl:"):
                kl = float(part[3:])
                if not (kl > 0 and math.isfinite(kl)):
                    raise ValueError
                out.append(KLBudget(kl))
            else:
                a = float(part)
                if not math.isfinite(a):
                    raise ValueError
                out.append(a)
        except ValueError:
            raise SteerError(
                f"bad alpha {part!r} in {text!r}: use numbers and KL budgets like 0,0.5,kl:0.1 (budget > 0)"
            ) from None
    if not out:
        raise SteerError(f"no alphas in {text!r}")
    return out


def as_alpha_specs(alphas: str | Sequence[float | str | KLBudget]) -> list[AlphaSpec]:
    """``"0,kl:0.1"``, ``[0, 0.5, "kl:0.1"]`` or parsed specs -> ``[0.0, 0.5, KLBudget(0.1)]``."""
    specs: list[AlphaSpec] = []
    for a in [alphas] if isinstance(alphas, str) else alphas:
        specs += [a] if isinstance(a, KLBudget) else parse_alpha_specs(str(a))
    if not specs:
        raise SteerError("give at least one alpha")
    return specs


def parse_budgets(text: str) -> list[float]:
    """``0.03,0.1,0.3,1`` (``kl:`` prefixes allowed) -> sorted unique budgets."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    specs = parse_alpha_specs(",".join(p if p.lower().startswith("kl:") else f"kl:{p}" for p in parts))
    return sorted({s.kl for s in specs if isinstance(s, KLBudget)})
