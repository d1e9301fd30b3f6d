"""The JSON files stored beside a vector (``<name>.calibration.json``, ``<name>.tuning.json``): one document of
entries for one version of the vector (its sha256), written atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steer_plugin.io.atomic import write_text_atomic


def write_sidecar(
    path: Path, *, fmt: str, version: int, vector_path: str | Path, sha: Any, field: str, entries: Sequence[Any]
) -> Path:
    """Write ``entries`` (JSON-ready) under ``field`` with the format header and the vector they belong to."""
    doc = {
        "format": fmt,
        "format_version": version,
        "vector": Path(vector_path).name,
        "vector_sha256": sha,
        field: list(entries),
    }
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return path
