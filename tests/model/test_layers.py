"""Layer specs: ``all``, lists, ranges; one-line errors for out-of-range and garbage."""

from __future__ import annotations

import pytest

from steer_plugin.errors import SteerError
from steer_plugin.model.layers import format_layers, parse_layers
from tests.helpers.cli import assert_one_line_error, run_cli


@pytest.mark.parametrize(
    "spec, want",
    [
        (None, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("all", list(range(10))),
        (" ALL ", list(range(10))),
        ("3", [3]),
        ("0,3,5-7", [0, 3, 5, 6, 7]),
        ("7-9,0", [0, 7, 8, 9]),
        ("2-2", [2]),
        ("1, 2 ,1", [1, 2]),
        ("4;1", [1, 4]),
        ("0-9", list(range(10))),
        ("5 - 6", [5, 6]),
    ],
)
def test_parse(spec, want):
    assert parse_layers(spec, 10) == want


@pytest.mark.parametrize(
    "n, want",
    [(30, list(range(10, 20))), (32, list(range(10, 22))), (12, [4, 5, 6, 7]), (3, [1]), (2, [0, 1]), (1, [0])],
)
def test_middle_is_the_middle_third(n, want):
    assert parse_layers("middle", n) == parse_layers(" Middle ", n) == want


@pytest.mark.parametrize("spec", ["10", "0,10", "8-12", "-1", "99"])
def test_out_of_range(spec):
    with pytest.raises(SteerError, match=r"out of range: this model has layers 0-9") as info:
        parse_layers(spec, 10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec", ["abc", "1-", "-1-3", "3-1", "1,,2", "1.5", "1-2-3", "first", "1e2", "0x3", ","])
def test_garbage(spec):
    with pytest.raises(SteerError, match=r"bad layer spec .*use 'all', 'middle' or 0-based indices and ranges") as info:
        parse_layers(spec, 10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "layers, text", [([0, 1, 2, 3], "all"), ([0, 1, 2], "0-2"), ([0, 2, 3, 5], "0,2-3,5"), ([3], "3"), ([], "")]
)
def test_format_roundtrip(layers, text):
    assert format_layers(layers, 4 if text == "all" else 8) == text
    if layers:
        assert parse_layers(text, 4 if text == "all" else 8) == layers


def test_huge_layer_ranges_are_not_expanded(stats_file_for_build, tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    code, _, err = run_cli(
        ["build", "--stats", stats_file_for_build, "--layers", "0-99999999999", "--out", out], capsys
    )
    assert_one_line_error(code, err, "out of range: this model has layers 0-2")
    code, _, err = run_cli(["build", "--stats", stats_file_for_build, "--layers", "all", "--out", out], capsys)
    assert code == 0, err


@pytest.mark.parametrize("spec", ["", " ", "\t"])
def test_a_blank_layer_spec_is_refused_not_all(spec):
    from steer_plugin.errors import SteerError
    from steer_plugin.model.layers import layer_ranges, parse_layers

    for check in (lambda: layer_ranges(spec), lambda: parse_layers(spec, 3)):
        with pytest.raises(SteerError, match="names no layers"):
            check()
    assert parse_layers(None, 3) == [0, 1, 2]  # None (no spec) is still every layer
