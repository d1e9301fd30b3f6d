"""The per-text states of a recording (``<class>.npy`` [N, layers, hidden] per class), memory-mapped.

`steer record --save-activations DIR` writes them; ``pca``/``probe`` vectors and ``--neutral-pcs`` read them
one layer at a time, so a recording larger than memory works (only one layer's rows are in RAM).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from steer_plugin.data.goemotions import target_slug
from steer_plugin.errors import SteerError
from steer_plugin.io.npy import read_npy_header
from steer_plugin.vectors.stats import HiddenStateStats


class Activations:
    """A folder of per-class activation files, checked against the statistics recorded with them."""

    def __init__(self, folder: str | os.PathLike, stats: HiddenStateStats) -> None:
        self.folder = Path(folder)
        self.stats = stats
        self._arrays: dict[str, np.ndarray] = {}

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            path = self.folder / f"{target_slug(name)}.npy"
            if not path.is_file():
                raise SteerError(f"{self.folder}: no activations of class {name!r} ({path.name} is missing)")
            shape, fortran, dtype, _ = read_npy_header(path)
            want = (self.stats.get(name).count, *self.stats.shape)
            if tuple(shape) != want or fortran or dtype.kind != "f":
                raise SteerError(
                    f"{path}: {dtype} {tuple(shape)} does not match the statistics ({name}: {want[0]} texts x "
                    f"{want[1]} layers x {want[2]}): activations and stats must come from one recording"
                )
            self._arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        return self._arrays[name]

    def layer(self, name: str, layer: int) -> np.ndarray:
        """The class's states at ``layer``: [N, hidden] float64."""
        states = np.asarray(self._array(name)[:, layer, :], dtype=np.float64)
        if not np.isfinite(states).all():
            raise SteerError(f"{self.folder}: the activations of {name!r} at layer {layer} are not finite")
        return states

    def count(self, name: str) -> int:
        return int(self._array(name).shape[0])
