"""steer-plugin: emotion steering vectors for causal LMs, evaluated with lm-evaluation-harness.

The public API is imported lazily so that `import steer_plugin` (and `steer --help`) stays instant.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "SteeringVector": "steer_plugin.vector",
    "HiddenStateStats": "steer_plugin.stats",
    "record_hidden_states": "steer_plugin.record",
    "load_goemotions": "steer_plugin.data",
    "SteerError": "steer_plugin.errors",
}

__all__ = [  # noqa: RUF022 (grouped by the data flow, not alphabetically)
    "load_goemotions",
    "record_hidden_states",
    "HiddenStateStats",
    "SteeringVector",
    "SteerError",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.data import load_goemotions
    from steer_plugin.errors import SteerError
    from steer_plugin.record import record_hidden_states
    from steer_plugin.stats import HiddenStateStats
    from steer_plugin.vector import SteeringVector


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steer_plugin' has no attribute {name!r}")
