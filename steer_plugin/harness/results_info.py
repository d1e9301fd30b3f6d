"""What ``steered_hf`` adds to lm-eval's results (``config.model_info``): the steering it ran under and how
its loglikelihoods were computed; and the warning when a vector was built on another model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from steer_plugin.io.terminal import printable
from steer_plugin.model.fingerprint import model_fingerprint
from steer_plugin.model.hooks import SteeringPlan
from steer_plugin.model.layers import format_layers
from steer_plugin.model.positions import Positions
from steer_plugin.vectors.vector import SteeringVector

log = logging.getLogger(__name__)


class ResolvedSteering(NamedTuple):
    """One configuration placed on the model: its vectors loaded, its deltas on the chosen layers."""

    vectors: list[SteeringVector]
    alphas: list[float]  # one per vector
    layers: list[int]  # the chosen layers (0-based)
    positions: Positions
    plan: SteeringPlan


def steering_record(resolved: ResolvedSteering, backend: str, block_path: str, n_blocks: int) -> dict[str, Any]:
    """``model_info["steering"]``: the vectors (file, hash, metadata), alphas, layers and where they were added
    (``backend``: the steering backend, or the engine that steered)."""
    return {
        "vectors": [
            {
                "path": v.metadata.get("source_path"),
                "sha256": v.metadata.get("source_sha256"),
                "metadata": {k: x for k, x in v.metadata.items() if not k.startswith("source_")},
            }
            for v in resolved.vectors
        ],
        "alphas": resolved.alphas if resolved.vectors else [],
        "layers": format_layers(resolved.layers, n_blocks),
        "positions": resolved.positions,
        "backend": backend,
        "block_path": block_path,
        "steered_layers": sorted(resolved.plan.deltas),
    }


@dataclass
class ReuseRecord:
    """``model_info["prefix_reuse"]``: asked for, what blocked it, and on a model with sliding-window layers the
    requests / prompts of the current configuration that took the plain path for the window's sake."""

    enabled: bool
    blocked_by: str | None
    window: int | None

    def as_dict(self, longer_than_window: dict[str, int]) -> dict[str, Any]:
        info: dict[str, Any] = {"enabled": self.enabled, "blocked_by": self.blocked_by}
        if self.window is not None:
            info.update(sliding_window=self.window, longer_than_window=longer_than_window)
        return info


def warn_other_model(vectors: list[SteeringVector], model: Any, name: str) -> None:
    """Log a warning for each vector whose metadata names another model than ``model`` (called ``name``)."""
    here = model_fingerprint(model, name)
    for v in vectors:
        built_on = v.metadata.get("model")
        if built_on and Path(str(built_on)).name != Path(here["model"]).name:
            same = v.metadata.get("config_hash") == here["config_hash"]
            log.warning(
                "steering vector %s was built on %s, but the model is %s%s",
                printable(v.metadata.get("source_path")),
                printable(built_on),
                printable(here["model"]),
                " (same architecture config)" if same else " (different config)",
            )
