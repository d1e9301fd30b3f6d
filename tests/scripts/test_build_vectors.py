"""scripts/build_vectors.py on a tiny Llama: one recording writes every emotion's and Ekman group's vector of the
recipe, each the vector `steer build` makes for that target alone (itself checked against numpy references in
tests/vectors/test_directions.py), with the names, counts and metadata the shipped sets have."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from steer_plugin.data.goemotions import EKMAN, LABELS
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import run_cli
from tests.helpers.tiny import load_script, write_goemotions_every_label

SIZES = {"anger": 5, "neutral": 8}  # every other label: 3 texts


def _script(monkeypatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["build_vectors.py", *argv])
    load_script("build_vectors").main()


def test_one_recording_writes_the_default_recipe_for_every_target(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    data = write_goemotions_every_label(tmp_path / "goemotions", SIZES)
    out = tmp_path / "vectors"
    _script(monkeypatch, ["--model", tiny_llama_dir, "--model-id", "org/Tiny-Model", "--data", str(data),
                          "--methods", "mean", "--centre", "emotions", "--neutral-pcs", "3", "--batch-size", "4",
                          "--note", "a tiny test model", "--out", str(out)])  # fmt: skip
    written = sorted(p.name for p in (out / "tiny-model").glob("*.safetensors"))
    emotions = [label for label in LABELS if label != "neutral"]
    want = sorted([*(f"{e}-mean-emotions-npc3.safetensors" for e in emotions),
                   *(f"ekman_{g}-mean-emotions-npc3.safetensors" for g in EKMAN)])  # fmt: skip
    assert written == want and len(written) == 33
    assert len(capsys.readouterr().out.strip().splitlines()) == 33  # one line per vector: path, count, norm
    for target, name in (("anger", "anger"), ("ekman:joy", "ekman_joy")):
        got = SteeringVector.load(out / "tiny-model" / f"{name}-mean-emotions-npc3.safetensors")
        meta = got.metadata
        assert (meta["method"], meta["centre"], meta["neutral_pcs"]) == ("mean", "emotions", 3)
        assert (meta["model"], meta["note"]) == ("org/Tiny-Model", "a tiny test model")
        alone = tmp_path / f"{name}.safetensors"
        code, _, err = run_cli(["build", "--model", tiny_llama_dir, "--data", str(data), "--emotion", target,
                                "--centre", "emotions", "--neutral-pcs", "3", "--out", str(alone)], capsys)  # fmt: skip
        assert code == 0, err
        np.testing.assert_allclose(got.matrix.numpy(), SteeringVector.load(alone).matrix.numpy(), atol=1e-5, rtol=0)
    assert (
        SteeringVector.load(out / "tiny-model" / "anger-mean-emotions-npc3.safetensors").metadata["counts"]["anger"]
        == SIZES["anger"]
    )


def test_stats_without_their_per_text_states_are_refused(tmp_path, monkeypatch):
    from tests.helpers.tiny import save_tiny_stats

    stats = save_tiny_stats(tmp_path / "stats.safetensors")
    with pytest.raises(SystemExit, match="--stats with pca/probe or --neutral-pcs needs --activations DIR"):
        _script(monkeypatch, ["--model", "tiny", "--stats", str(stats), "--methods", "mean", "--neutral-pcs", "3",
                              "--out", str(tmp_path / "v")])  # fmt: skip
    assert not (tmp_path / "v").exists()
