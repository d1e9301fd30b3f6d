"""The shared one-line helpers: the first line of an exception, a number as a table cell."""

from __future__ import annotations

import numpy as np

from steer_plugin.errors import first_line
from steer_plugin.io.text_table import MISSING, number_cell


def test_first_line_of_a_multi_line_message_or_the_type_name():
    assert first_line(OSError("\n  not found: x \nTraceback ...\n")) == "not found: x"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("bad\nmore"), with_type=True) == "ValueError: bad"
    assert first_line(EOFError(), with_type=True) == "EOFError: "


def test_number_cell_marks_missing_numbers_and_keeps_integers_exact():
    for missing in (None, float("nan"), np.float32("nan"), np.float64("nan")):
        assert number_cell(missing) == MISSING == "-"
    assert number_cell(12345) == number_cell(np.int64(12345)) == "12345"  # not 1.234e+04
    assert number_cell(0.1234567) == format(0.1234567, ".4g") == "0.1235"
    assert number_cell(np.float32(2.5), ".3f") == "2.500"
    assert number_cell(float("inf")) == "inf"
