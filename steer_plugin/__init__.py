"""steer-plugin: emotion steering vectors for causal LMs, evaluated with lm-evaluation-harness.

The public API is imported lazily so that `import steer_plugin` (and `steer --help`) stays instant.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# the data flow: texts -> recorded statistics -> vector -> steered model
_LAZY = {
    "load_goemotions": "steer_plugin.data",
    "select_texts": "steer_plugin.data",
    "ModelOptions": "steer_plugin.models",
    "record_hidden_states": "steer_plugin.record",
    "HiddenStateStats": "steer_plugin.stats",
    "build_vector": "steer_plugin.build",
    "SteeringVector": "steer_plugin.vector",
    "steer": "steer_plugin.steering",
    "SteerError": "steer_plugin.errors",
}

__all__ = [  # noqa: RUF022 (grouped by the data flow, not alphabetically)
    "load_goemotions",
    "select_texts",
    "ModelOptions",
    "record_hidden_states",
    "HiddenStateStats",
    "build_vector",
    "SteeringVector",
    "steer",
    "SteerError",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.build import build_vector
    from steer_plugin.data import load_goemotions, select_texts
    from steer_plugin.errors import SteerError
    from steer_plugin.models import ModelOptions
    from steer_plugin.record import record_hidden_states
    from steer_plugin.stats import HiddenStateStats
    from steer_plugin.steering import steer
    from steer_plugin.vector import SteeringVector


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steer_plugin' has no attribute {name!r}")
