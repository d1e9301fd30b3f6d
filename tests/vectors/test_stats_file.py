"""The stats file as a source of untrusted data: every name that becomes a path is checked, every
tensor and field is validated on load (one line naming the file and the field), never trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steer_plugin.errors import SteerError
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats
from tests.helpers.cli import assert_one_line_error, run_cli

L, H = 3, 32


def _classes(*names: str, count: int = 5) -> dict[str, ClassStats]:
    g = torch.Generator().manual_seed(0)
    return {
        n: ClassStats(count, torch.randn(L, H, generator=g, dtype=torch.float64), torch.rand(L, H, dtype=torch.float64))
        for n in names
    }


def _stats_file(path: Path, classes: dict[str, ClassStats], **meta) -> Path:
    HiddenStateStats(classes, {"model": "tiny", "target": "anger", "baseline": "neutral", **meta}).save(path)
    return path


def _rewrite(path: Path, change) -> Path:
    """Load the raw tensors and header, let ``change(tensors, header)`` tamper with them, write them back."""
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    change(tensors, header)
    save_file(tensors, str(path), metadata=header)
    return path


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- names that become paths ---------------------------------------------------------------------------


def test_a_class_name_with_path_components_does_not_escape_the_vectors_folder(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    evil = "../../x/ESCAPED"
    stats = _stats_file(tmp_path / "s.safetensors", _classes(evil, "neutral"), target=evil)
    monkeypatch.chdir(work)
    code, _, err = run_cli(["build", "--stats", stats], capsys)
    assert_one_line_error(code, err, "s.safetensors", "ESCAPED")
    assert _files_under(tmp_path) == ["s.safetensors"]
    with pytest.raises(SteerError, match="ESCAPED"):
        HiddenStateStats.load(stats)


@pytest.mark.parametrize("model", ["a/..", "..", ".", "", "/", "a/./"])
def test_a_model_id_without_a_usable_name_stays_inside_vectors(tmp_path, capsys, monkeypatch, model):
    stats = _stats_file(tmp_path / "s.safetensors", _classes("anger", "neutral"), model=model)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run_cli(["build", "--stats", stats], capsys)[0] == 0
    [written] = _files_under(work)
    folder, name = Path(written).parts[-2:]
    assert Path(written).parts[0] == "vectors" and folder not in ("vectors", ".", "..") and name.startswith("anger")


def test_model_and_target_slugs_are_path_components():
    from steer_plugin.data.goemotions import target_slug
    from steer_plugin.model.loading import model_slug

    assert model_slug("meta-llama/Llama-3.2-3B-Instruct") == "llama-3.2-3b-instruct"
    for name in ("a/..", "..", ".", "", "/", "...", "x/.hidden"):
        slug = model_slug(name)
        assert slug and "/" not in slug and not slug.startswith("."), (name, slug)
    assert target_slug("ekman:anger") == "ekman_anger"
    for bad in ("../../x/ESCAPED", "anger/../..", "", "a\x00b"):
        with pytest.raises(SteerError, match="is not a class name"):
            target_slug(bad)


def test_a_non_string_model_id_is_a_one_line_error(tmp_path, capsys):
    stats = _stats_file(tmp_path / "s.safetensors", _classes("anger", "neutral"), model=["a", "b"])
    code, _, err = run_cli(["build", "--stats", stats, "--emotion", "anger"], capsys)
    assert_one_line_error(code, err, "s.safetensors", "model")


# --- tensors and fields ----------------------------------------------------------------------------


def _shape(t, h):
    t["neutral/mean"] = torch.zeros(L, H + 1, dtype=torch.float64)
    t["neutral/m2"] = torch.zeros(L, H + 1, dtype=torch.float64)


def _m2_shape(t, h):
    t["anger/m2"] = torch.zeros(L, 2, dtype=torch.float64)


def _negative_count(t, h):
    t["anger/count"] = torch.tensor([-5])


def _negative_m2(t, h):
    t["anger/m2"] = -t["anger/m2"] - 1


def _inf_mean(t, h):
    t["anger/mean"][1, 3] = float("inf")


def _float_count(t, h):
    t["anger/count"] = torch.tensor([5.5], dtype=torch.float64)


def _count_shape(t, h):
    t["anger/count"] = torch.tensor([5, 7])


def _one_dim(t, h):
    for c in ("anger", "neutral"):
        t[f"{c}/mean"], t[f"{c}/m2"] = t[f"{c}/mean"][0], t[f"{c}/m2"][0]


def _empty(t, h):
    for c in ("anger", "neutral"):
        t[f"{c}/mean"], t[f"{c}/m2"] = torch.zeros(0, H, dtype=torch.float64), torch.zeros(0, H, dtype=torch.float64)


def _extra_tensor(t, h):
    t["anger/var"] = torch.zeros(L, H, dtype=torch.float64)


def _version(t, h):
    h["format_version"] = "99"


def _no_version(t, h):
    del h["format_version"]


def _metadata_target(t, h):
    h["metadata"] = json.dumps({**json.loads(h["metadata"]), "target": 7})


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_shape, "neutral/mean"),
        (_m2_shape, "anger/m2"),
        (_negative_count, "anger/count"),
        (_negative_m2, "anger/m2"),
        (_inf_mean, "anger/mean"),
        (_float_count, "anger/count"),
        (_count_shape, "anger/count"),
        (_one_dim, "anger/mean"),
        (_empty, "anger/mean"),
        (_extra_tensor, "anger/var"),
        (_version, "format_version"),
        (_no_version, "format_version"),
        (_metadata_target, "target"),
    ],
)
def test_tampered_stats_files_are_refused_on_load(tmp_path, capsys, change, needle):
    stats = _rewrite(_stats_file(tmp_path / "s.safetensors", _classes("anger", "neutral")), change)
    with pytest.raises(SteerError, match=needle) as info:
        HiddenStateStats.load(stats)
    assert str(stats) in str(info.value)
    code, _, err = run_cli(
        ["build", "--stats", stats, "--emotion", "anger", "--out", tmp_path / "v.safetensors"], capsys
    )
    assert_one_line_error(code, err, "s.safetensors", needle)
    assert not (tmp_path / "v.safetensors").exists()
