"""Where steering adds its vector: at ``all`` positions, or at the ``response`` only (the last context token
and the continuation). Light: the sweep plan and its folder names use it without torch."""

from __future__ import annotations

from typing import Literal, cast, get_args

from steer_plugin.errors import check_choice

Positions = Literal["all", "response"]
POSITIONS: tuple[Positions, ...] = get_args(Positions)


def check_positions(positions: str) -> Positions:
    """``positions`` if it is one of ``POSITIONS``, else a one-line SteerError listing them."""
    return cast(Positions, check_choice("positions", positions, POSITIONS))
