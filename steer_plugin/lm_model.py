"""Import shim: ``steer_plugin.lm_model`` (named in docs and the autoload hook) is ``steer_plugin.harness.model``."""

from steer_plugin.harness.model import *  # noqa: F403
from steer_plugin.harness.model import SteeredHFLM

__all__ = ["SteeredHFLM"]
