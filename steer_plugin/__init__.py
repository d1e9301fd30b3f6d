"""steer-plugin: emotion steering vectors for causal LMs, evaluated with lm-evaluation-harness.

The public API is imported lazily so that `import steer_plugin` (and `steer --help`) stays instant.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from steer_plugin._version import __version__

# the data flow: texts -> recorded statistics -> vector -> steered model -> calibrated, evaluated run
_LAZY = {
    "load_goemotions": "steer_plugin.data.goemotions",
    "select_texts": "steer_plugin.data.selection",
    "ModelOptions": "steer_plugin.model.loading",
    "Recipe": "steer_plugin.vectors.recipe",
    "record_hidden_states": "steer_plugin.vectors.record",
    "HiddenStateStats": "steer_plugin.vectors.stats",
    "build_vector": "steer_plugin.vectors.build",
    "train_vector": "steer_plugin.vectors.train",
    "SteeringVector": "steer_plugin.vectors.vector",
    "random_like": "steer_plugin.vectors.controls",
    "steer": "steer_plugin.model.hooks",
    "calibrate": "steer_plugin.steering.calibrate",
    "SteeredHFLM": "steer_plugin.harness.model",
    "Evaluation": "steer_plugin.study.evaluation",
    "RecordOptions": "steer_plugin.study.run",
    "run": "steer_plugin.study.run",
    "RunResult": "steer_plugin.study.run",
    "tune": "steer_plugin.study.tune",
    "TuneResult": "steer_plugin.study.tune",
    "SteerError": "steer_plugin.errors",
}

__all__ = [  # noqa: RUF022 (grouped by the data flow, not alphabetically)
    "load_goemotions",
    "select_texts",
    "ModelOptions",
    "Recipe",
    "record_hidden_states",
    "HiddenStateStats",
    "build_vector",
    "train_vector",
    "SteeringVector",
    "random_like",
    "steer",
    "calibrate",
    "SteeredHFLM",
    "Evaluation",
    "RecordOptions",
    "run",
    "RunResult",
    "tune",
    "TuneResult",
    "SteerError",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.data.goemotions import load_goemotions
    from steer_plugin.data.selection import select_texts
    from steer_plugin.errors import SteerError
    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.model.hooks import steer
    from steer_plugin.model.loading import ModelOptions
    from steer_plugin.steering.calibrate import calibrate
    from steer_plugin.study.evaluation import Evaluation
    from steer_plugin.study.run import RecordOptions, RunResult, run
    from steer_plugin.study.tune import TuneResult, tune
    from steer_plugin.vectors.build import build_vector
    from steer_plugin.vectors.controls import random_like
    from steer_plugin.vectors.recipe import Recipe
    from steer_plugin.vectors.record import record_hidden_states
    from steer_plugin.vectors.stats import HiddenStateStats
    from steer_plugin.vectors.train import train_vector
    from steer_plugin.vectors.vector import SteeringVector


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steer_plugin' has no attribute {name!r}")
