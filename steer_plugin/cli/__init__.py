"""The ``steer`` command line: one module per command group, thin callers of the library.

Only argparse (and light library modules) at import time: `steer --help` must start instantly."""

from __future__ import annotations

import argparse
import sys

from steer_plugin._version import __version__
from steer_plugin.cli import data, steering, study, tasks, vectors, view
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
    for group in (data, vectors, tasks, steering, study, view):  # the order of `steer --help`
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
        return int(args.func(args) or 0)
    except SteerError as e:  # messages quote file contents: one line, no escapes
        print(f"{command}: error: {printable(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
