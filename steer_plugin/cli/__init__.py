"""The ``steer`` command line: one module per command group, thin callers of the library.

Only argparse (and light library modules) at import time: `steer --help` must start instantly."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from steer_plugin._version import __version__
from steer_plugin.cli import data, steering, study, tasks, tune, vectors, view
from steer_plugin.cli.args import join_gguf_file
from steer_plugin.errors import SteerError
from steer_plugin.io.terminal import printable

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steer", description="Emotion steering vectors for causal LMs, evaluated with lm-evaluation-harness."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (data, vectors, tasks, steering, study, tune, view):  # the order of `steer --help`
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    command = "steer"
    try:  # parsing too: a Ctrl-C while the arguments are read is "interrupted", not a traceback
        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"steer {args.command}" if getattr(args, "command", None) else command
        if args.version:
            print(__version__)
            return 0
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        join_gguf_file(args)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a full disk or a closed pipe under stdout: said here, not at exit
        return code
    except SteerError as e:  # messages quote file contents: one line, no escapes
        print(f"{command}: error: {printable(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if not _stdout_failed(e):
            raise
        print(f"{command}: error: cannot write to standard output: {e.strerror or e}", file=sys.stderr)
        return 2


# what writing to a stream says when standard output is a full device, a closed pipe or a lost terminal; our
# own files' write errors are WriteErrors (SteerErrors) and name their file
_STREAM_ERRORS = (errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EDQUOT)


def _stdout_failed(e: OSError) -> bool:
    """Whether ``e`` is standard output failing (``> /dev/full``, a closed pipe); if so stdout is pointed at
    /dev/null, so that the interpreter's own flush at exit adds no second error."""
    if e.filename is not None or e.errno not in _STREAM_ERRORS:
        return False
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor (a replaced sys.stdout): nothing to point
        pass
    return True
