"""Steering configurations (dicts of vector, alpha, layers, positions) applied to a ``SteeredHFLM`` one after
another: the reference that config batching must equal."""

from __future__ import annotations

from steer_plugin.harness.steering_args import SteeringArgs


def configure(lm, c: dict) -> None:
    lm.configure(c["vector"], c["alpha"], c.get("layers", "all"), c.get("positions", "all"))


def run_each(lm, configs: list[dict], call, planned: bool, **plan_kw) -> list:
    """``call()`` under every configuration in turn; ``planned``: announced first (config batching)."""
    lm.plan_ahead([SteeringArgs.parse(**c) for c in configs] if planned else [], **plan_kw)
    out = []
    try:
        for c in configs:
            configure(lm, c)
            out.append(call())
    finally:
        lm.plan_ahead([])
        lm.configure(None, 0.0)
    return out
