"""The format tags that mark our JSON files, where readers of several stages must tell them apart."""

from __future__ import annotations

from typing import Any

CALIBRATION_FORMAT = "steer-plugin/calibration"  # <vector>.calibration.json, e.g. beside a sweep's controls


def is_calibration(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("format") == CALIBRATION_FORMAT
