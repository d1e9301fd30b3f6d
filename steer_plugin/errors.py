"""User-facing errors: one line that says what was wrong and what is accepted."""

from collections.abc import Sequence


class SteerError(Exception):
    """Bad input from the user (file, name, spec). The CLI prints it as one line, no traceback."""


def check_choice(what: str, value: str, accepted: Sequence[str]) -> str:
    """``value`` if it is one of ``accepted``, else a SteerError that lists them."""
    if value not in accepted:
        raise SteerError(f"unknown {what} {value!r}; use one of {', '.join(accepted)}")
    return value


def first_line(err: BaseException, *, with_type: bool = False) -> str:
    """The first line of ``err``'s message, for a one-line error (a library's message may run to a traceback).

    Args:
        err: the exception caught.
        with_type: prefix its type's name (``OSError: ...``).

    Returns:
        The first non-blank line; without one, the type's name (or ``Type: `` with ``with_type``).
    """
    lines = str(err).strip().splitlines()
    line = lines[0].strip() if lines else ""
    if with_type:
        return f"{type(err).__name__}: {line}"
    return line or type(err).__name__


def check_count(what: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an integer ``>= minimum`` (a bool is not), else a SteerError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SteerError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value
