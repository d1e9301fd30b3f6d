"""How steering reaches the model: ``nnsight`` interventions or plain PyTorch forward ``hooks``, the same math
(see ``hooks.py``). Light: the command line lists them without torch."""

from __future__ import annotations

from typing import Literal, cast, get_args

from steer_plugin.errors import check_choice

Backend = Literal["nnsight", "hooks"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)


def check_backend(backend: str) -> Backend:
    """``backend`` if it is one of ``BACKENDS``, else a one-line SteerError listing them."""
    return cast(Backend, check_choice("backend", backend, BACKENDS))
