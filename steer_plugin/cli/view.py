"""`steer view DIR`: open a run's report.html in the default browser (and print its path, for machines
without one)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError


def add_commands(sub: Any) -> None:
    """view."""
    p = sub.add_parser("view", help="open a run folder's report.html in the default browser")
    p.add_argument("dir", help="a `steer run` folder, or a `steer sweep` folder after `steer report`")
    p.set_defaults(func=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    import webbrowser

    from steer_plugin.study.report_page import OUTPUT

    page = Path(args.dir) / OUTPUT
    if not page.is_file():
        raise SteerError(f"no {OUTPUT} in {args.dir}: `steer run` writes one, `steer report DIR` makes it")
    print(page.resolve())
    webbrowser.open(page.resolve().as_uri())  # False where there is no browser: the path above is the answer
    return 0
