"""`steer check`, `steer generate` (and later evaluation commands): argparse only at import time."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def add_commands(sub: Any, add_model_args: Callable[..., None]) -> None:
    return None
