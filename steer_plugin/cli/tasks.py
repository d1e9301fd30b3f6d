"""`steer tasks-dir`: where our lm-eval tasks live (for ``--include_path``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: Any) -> None:
    p = sub.add_parser("tasks-dir", help="print the folder of our lm-eval tasks (for --include_path)")
    p.set_defaults(func=cmd_tasks_dir)


def cmd_tasks_dir(args: argparse.Namespace) -> int:
    from steer_plugin.harness.tasks import tasks_dir

    print(tasks_dir())
    return 0
