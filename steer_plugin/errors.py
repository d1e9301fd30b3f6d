"""User-facing errors: one line that says what was wrong and what is accepted."""


class SteerError(Exception):
    """Bad input from the user (file, name, spec). The CLI prints it as one line, no traceback."""
