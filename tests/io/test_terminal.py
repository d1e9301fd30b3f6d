"""Text from files shown on a terminal (io.terminal): control characters escaped."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.cli import CSI, ESC, NUL


def test_printable():
    from steer_plugin.io.terminal import printable

    assert printable("plain ü 日本") == "plain ü 日本"
    assert printable(f"a{ESC}b{NUL}c\td\re\x7f{CSI}\u2028\u202e") == "a\\x1bb\\x00c\\td\\re\\x7f\\x9b\\u2028\\u202e"
    assert printable("a\nb", allow_newlines=True) == "a\nb"
    assert printable(Path("x")) == "x"
