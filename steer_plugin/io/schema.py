"""Checking fields: of a JSON object read from a file (one rule per field), and of the settings objects the
Python API takes (their type annotations are the rules). The first problem is one line.

The file formats (vector metadata, calibration files) describe their fields with these rules, so every
reader reports ``field: value why`` the same way instead of failing later with a TypeError. The settings
dataclasses (``ModelOptions``, ``Recipe``, ``RecordOptions``, ``Evaluation``) call ``check_fields`` where they
are built: ``trust_remote_code="no"`` or ``chat="yes"`` is refused as the command line refuses it, not taken
as true or found wrong hours later.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeGuard, Union, get_args, get_origin

from steer_plugin.errors import SteerError

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


def value_problem(value: Any, hint: Any, *, choices: bool = True) -> str | None:
    """``is not a bool``, ``is not one of 'a', 'b'`` ... where ``value`` does not fit the type ``hint`` (bool,
    int, float, str, None, os.PathLike, Literal, unions, Sequence[...]); None where it does. ``choices=False``
    takes a Literal of strings as any string (its choices are checked elsewhere)."""
    if _accepts(value, hint, choices):
        return None
    return f"{shown(value)} is not {_described(hint, choices)}"


def check_fields(obj: Any, flags: Mapping[str, str] | None = None, *, choices: bool = True) -> None:
    """Every field of the dataclass ``obj`` against its annotation: a one-line SteerError naming the first
    that does not fit (as ``flags`` names it, e.g. ``--centre``, else ``Type.field``). A string outside a
    Literal's choices reads as the command line says it: ``unknown --chat 'yes'; use one of auto, on, off``."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if _accepts(value, hint, choices):
            continue
        name = (flags or {}).get(f.name, f"{type(obj).__name__}.{f.name}")
        literal = _string_literal(hint) if choices else None
        if literal is not None and isinstance(value, str):
            raise SteerError(f"unknown {name} {value!r}; use one of {', '.join(literal)}")
        raise SteerError(f"{name}: {shown(value)} is not {_described(hint, choices)}")


def check_arguments(function: str, arguments: Mapping[str, tuple[Any, Any]]) -> None:
    """A function's arguments, ``{name: (value, type hint)}``, as ``check_fields`` checks a dataclass's fields:
    ``run(record={...})`` is a one-line SteerError, not an AttributeError minutes later."""
    for name, (value, hint) in arguments.items():
        problem = value_problem(value, hint)
        if problem:
            raise SteerError(f"{function}({name}=...): {problem}")


def check_call(function: Callable[..., Any], arguments: Mapping[str, Any]) -> None:
    """``check_arguments`` with ``function``'s own annotations as the hints: ``check_call(f, locals())`` as the
    first line of ``f`` checks every argument as its signature types it."""
    hints = _hints(function)
    check_arguments(
        getattr(function, "__name__", "function"),
        {name: (value, hints[name]) for name, value in arguments.items() if name in hints and name != "return"},
    )


_HINTS: dict[Any, dict[str, Any]] = {}


def _hints(cls: Any) -> dict[str, Any]:
    if cls not in _HINTS:  # resolved once per class: the annotations are strings (postponed evaluation)
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _members(hint: Any) -> tuple[Any, ...]:
    return get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)


def _string_literal(hint: Any) -> tuple[str, ...] | None:
    """The choices of a Literal of strings ``hint`` (alone, or beside None); None for any other hint."""
    others = [m for m in _members(hint) if m is not type(None)]
    if len(others) != 1 or get_origin(others[0]) is not Literal:
        return None
    return tuple(str(c) for c in get_args(others[0]))


def _accepts(value: Any, hint: Any, choices: bool) -> bool:
    origin = get_origin(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_accepts(value, m, choices) for m in get_args(hint))
    if origin is Literal:
        literal = get_args(hint)
        return isinstance(value, str) if not choices else any(type(value) is type(c) and value == c for c in literal)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return is_number(value)
    if hint is os.PathLike:
        return isinstance(value, os.PathLike)
    if origin in (Sequence, list, tuple):
        (item,) = get_args(hint)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_accepts(v, item, choices) for v in value)
    return isinstance(value, origin or hint)


def _described(hint: Any, choices: bool) -> str:
    members = _members(hint)
    if len(members) > 1:
        return " or ".join(_described(m, choices) for m in members)
    origin = get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(c) for c in get_args(hint)) if choices else "a string"
    if origin in (Sequence, list, tuple):
        item = (get_args(hint) or (Any,))[0]
        return "a list of " + " or ".join(_plural(_described(m, choices)) for m in _members(item))
    names = {bool: "true or false (a bool)", int: "an integer", float: "a number", str: "a string",
             type(None): "None", os.PathLike: "a path"}  # fmt: skip
    name = str(getattr(hint, "__name__", hint))
    return names.get(hint, f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}")


def _plural(text: str) -> str:
    return text.removeprefix("an ").removeprefix("a ") + "s" if text.startswith(("a ", "an ")) else text
