"""Checking the fields of a JSON object read from a file: one rule per field, the first problem as one line.

The file formats (vector metadata, calibration files) describe their fields with these rules, so every
reader reports ``field: value why`` the same way instead of failing later with a TypeError.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeGuard

Rule = tuple[Callable[[Any], bool], str]  # (accepts the value, why not: "is not a number")


def is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> TypeGuard[int | float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_finite(x: Any) -> TypeGuard[int | float]:
    return is_number(x) and math.isfinite(x)


def shown(value: Any) -> str:
    """``repr`` of a value from a file, cut to a length an error line can hold."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fields_problem(
    obj: Any,
    rules: Mapping[str, Rule],
    where: str = "",
    *,
    required: Iterable[str] = (),
    only_known: bool = False,
) -> str | None:
    """``where.field: value why`` for the first field of ``obj`` that breaks its rule, is missing
    (``required``) or, with ``only_known``, has no rule; None if there is none."""
    prefix = f"{where}." if where else ""
    if not isinstance(obj, dict):
        return f"{where or 'the document'}: {shown(obj)} is not an object"
    for name in required:
        if name not in obj:
            return f"{prefix}{name}: missing"
    for name, value in obj.items():
        if name not in rules:
            if only_known:
                return f"{prefix}{name}: not a known field"
            continue
        ok, why = rules[name]
        if not ok(value):
            return f"{prefix}{name}: {shown(value)} {why}"
    return None
