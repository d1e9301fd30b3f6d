"""Optional engines and browsers: a test without them skips on a user's machine, and fails where CI installed them
and says so (a skipped test proves nothing)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_VLLM = "STEER_REQUIRE_VLLM"  # set by `make test-vllm`: vLLM's CPU build is installed
REQUIRE_BROWSER = "STEER_REQUIRE_BROWSER"  # set by .ci/run: Debian's chromium is installed


def unavailable(reason: str, variable: str) -> NoReturn:
    """Skip (the whole module where called at import), or fail where ``variable`` promises the thing is there."""
    if os.environ.get(variable):
        pytest.fail(f"{reason} (${variable} is set: it must run here)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
