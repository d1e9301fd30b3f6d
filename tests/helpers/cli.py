"""Running the `steer` command line in tests and checking its one-line errors."""

from __future__ import annotations

from steer_plugin.cli import main


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `steer ARGV`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    """Exit code 2 and exactly one stderr line, no traceback, holding every needle."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


ESC, NUL, CSI = "\x1b", "\x00", "\x9b"


def no_controls(text: str) -> None:
    for ch in (ESC, NUL, CSI, "\r", "\u202e"):
        assert ch not in text, repr(text)
