"""The ``steer`` command line: one module per command group, thin callers of the library."""

from steer_plugin.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
