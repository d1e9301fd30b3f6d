"""What a stored calibration must match to be reused, and the one rule that compares two keys.

A key names the model (folder name, ``weights`` fingerprint, config hash, dtype), the vector file's sha256, the
steered layers and positions, and the texts (their sha256 and counts). Everything but ``weights`` must be equal.
The ``weights`` are ``model.fingerprint.weights_fingerprint`` of the files the model came from: the same fingerprint
is the same model; another one is another model with the same folder name and config; a key without one (made
before it was recorded, or on a model not loaded from files) travels, so it is verified on this model first.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from steer_plugin.data.neutral_texts import texts_sha256

WEIGHTS = "weights"


class Reuse(enum.Enum):
    """What a stored key means for this model's key."""

    AS_STORED = "as stored"  # the same setting on the same weights
    VERIFY = "verify"  # the same setting, weights unknown to one of the keys: verified on this model first
    NO = "no"  # another setting, or other weights


@dataclass(frozen=True)
class CalibrationKey:
    """A calibration's key, its fields as they were made or read: their order, and whether ``weights`` is there at
    all (the shipped calibrations have none), are kept, so a stored entry is written back unchanged.

    Keys are equal when all their fields are (``weights`` included, in any order)."""

    fields: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))  # read-only: keys are compared

    @classmethod
    def for_model(
        cls,
        model: Any,
        model_name: str,
        vector_sha256: str,
        layers: str,
        positions: str,
        calibration_texts: list[str],
        heldout_texts: list[str],
    ) -> CalibrationKey:
        """The key of calibrating a vector on ``model`` with these layers, positions and (scored) texts."""
        from steer_plugin.model.fingerprint import config_hash, weights_fingerprint

        param = next(model.parameters(), None)
        source = str(getattr(model, "name_or_path", "") or model_name)  # where the weights were read from
        return cls(
            {
                "model": Path(str(model_name)).name,
                WEIGHTS: weights_fingerprint(source, getattr(model.config, "_commit_hash", None)),
                "config_hash": config_hash(model.config),
                "dtype": str(param.dtype).removeprefix("torch.") if param is not None else "?",
                "vector_sha256": vector_sha256,
                "layers": layers,
                "positions": positions,
                "texts_sha256": texts_sha256([*calibration_texts, "\x00", *heldout_texts]),
                "n_calibration": len(calibration_texts),
                "n_heldout": len(heldout_texts),
            }
        )

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    @property
    def weights(self) -> Any:
        """The weights fingerprint; None when unknown (absent or null)."""
        return self.fields.get(WEIGHTS)

    @property
    def vector_sha256(self) -> Any:
        return self.fields.get("vector_sha256")

    def _setting(self) -> dict[str, Any]:
        return {name: value for name, value in self.fields.items() if name != WEIGHTS}

    def reuse_of(self, stored: CalibrationKey) -> Reuse:
        """How a calibration stored under ``stored`` serves this key: the same setting is everything but the
        weights; then the same known weights are used as stored, unknown weights (either side) are verified."""
        if stored._setting() != self._setting():
            return Reuse.NO
        if self.weights is not None and stored.weights == self.weights:
            return Reuse.AS_STORED
        if self.weights is None or stored.weights is None:
            return Reuse.VERIFY
        return Reuse.NO

    def to_json(self) -> dict[str, Any]:
        return dict(self.fields)
