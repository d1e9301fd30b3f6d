"""Where steering goes when nobody says: one default of layers and positions for every `steer` command
(`calibrate`, `generate`, `check`, `sweep`, `run`) and the library functions behind them.

One place on purpose: a KL budget is calibrated for (vector, layers, positions), so "the kl:0.3 alpha" that
`steer calibrate` prints pushes as hard in `steer generate` only if both steer the same layers at the same
positions. The values are `steer run`'s, chosen by measurement (docs/findings.md, "Choosing the defaults").

Light (no torch): the command line reads them while it builds its parsers.
"""

from __future__ import annotations

from steer_plugin.model.layers import MIDDLE
from steer_plugin.model.positions import Positions

DEFAULT_LAYERS = MIDDLE  # the middle third of the blocks
DEFAULT_POSITIONS: Positions = "response"  # the last context token and the continuation
