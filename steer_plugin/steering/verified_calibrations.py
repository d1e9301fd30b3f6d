"""Verifying a stored calibration that travels, and remembering the verifications that held.

A stored entry without a weights fingerprint (made before it was recorded, or on a model not loaded from files:
the shipped calibrations, made on an offline copy of the hub model, are such) is meant to travel, so it is
verified instead of used as stored: one KL evaluation per budget at its stored alpha on this model's calibration
texts; within its tolerance it is reused, else the vector is calibrated again (the progress output says which).
A verification that held is remembered per weights fingerprint in the user's cache (``$STEER_CACHE_DIR``, else
``$XDG_CACHE_HOME/steer-plugin``, else ``~/.cache/steer-plugin``): the same evaluations on the same weights give
the same KLs, so later runs skip them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError
from steer_plugin.io.reading import JSON_LIMIT, read_regular_text
from steer_plugin.steering.calibration_key import CalibrationKey
from steer_plugin.steering.calibration_result import Calibration

log = logging.getLogger(__name__)


def verify(c: Calibration, kl_of: Callable[[float], float]) -> tuple[bool, str]:
    """Whether ``c`` holds on this model: per row, the KL at its stored alpha (one evaluation) within ``c``'s
    tolerance of its budget (of the KL it recorded, for a budget it never reached); and the numbers, in words."""
    ok, said = True, []
    for r in c.rows:
        kl, target = kl_of(r.alpha), r.kl_budget if r.converged else r.kl_calibration
        ok = ok and kl > 0 and abs(kl / target - 1) <= c.tolerance
        said.append(f"KL {kl:.4g} at alpha {r.alpha:.5g} for {'budget' if r.converged else 'stored KL'} {target:.4g}")
        if not ok:
            break  # one miss is enough: the vector is calibrated again
    return ok, f"{', '.join(said)}; tolerance {c.tolerance:.0%}"


def verified_file() -> Path:
    """Where verifications that held are remembered (see the module's docstring)."""
    if os.environ.get("STEER_CACHE_DIR"):
        return Path(os.environ["STEER_CACHE_DIR"]) / "verified-calibrations.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "steer-plugin" / "verified-calibrations.json"


def verification_id(key: CalibrationKey, c: Calibration) -> str | None:
    """This verification's identity: this model's key (weights included) and the stored entry's content; None
    without a weights fingerprint (nothing to tell these weights from others by)."""
    if not key.weights:
        return None
    blob = json.dumps({"key": key.to_json(), "calibration": c.to_json()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def remembered() -> dict[str, Any]:
    try:
        doc = json.loads(read_regular_text(verified_file(), JSON_LIMIT))
    except (OSError, ValueError):
        return {}  # none yet, unreadable or damaged: verify again (it is only a shortcut)
    return doc if isinstance(doc, dict) else {}


def remember(memo: str, said: str) -> None:
    from steer_plugin.io.atomic import write_text_atomic

    doc = {**remembered(), memo: {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(), "result": said}}
    try:
        verified_file().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(verified_file(), json.dumps(doc, indent=1) + "\n")
    except (OSError, SteerError) as e:  # a read-only home: verify again next time
        log.debug("could not remember the verification: %s", e)
