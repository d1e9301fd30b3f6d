"""`steer build --method pca|probe`, `--centre emotions` and `--neutral-pcs K` on a tiny Llama, against numpy
references computed from every text run alone through the HF model with a forward hook on each block: an SVD
of the paired differences, a logistic regression fitted by gradient descent here, the mean of the 27 class
means, the top principal components of the neutral states.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from steer_plugin.data.goemotions import LABELS
from steer_plugin.vectors.metadata import metadata_problem
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.tiny import hook_last_token_states, save_tiny_stats, write_goemotions_every_label

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goemotions"
EMOTIONS = [label for label in LABELS if label != "neutral"]
SIZES = {"anger": 9, "neutral": 11}  # every other class: 3 texts


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A GoEmotions folder with every label (single-label rows, unique texts) in the train split."""
    return write_goemotions_every_label(tmp_path_factory.mktemp("goemotions"), SIZES)


@pytest.fixture(scope="module")
def states(tiny_llama_dir, data) -> dict[str, np.ndarray]:
    """class -> [N, L, H] float64 hook states, rows in file order."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    by_class: dict[str, list[str]] = {}
    for line in (data / "train.tsv").read_text(encoding="utf-8").splitlines():
        text, label, _ = line.split("\t")
        by_class.setdefault(LABELS[int(label)], []).append(text)
    return {c: hook_last_token_states(model, tok, texts) for c, texts in by_class.items()}


@pytest.fixture(scope="module")
def recording(tiny_llama_dir, data, tmp_path_factory) -> tuple[Path, Path]:
    """`steer record --emotion all --save-activations DIR` once: (stats file, activations folder)."""
    folder = tmp_path_factory.mktemp("recording")
    stats, acts = folder / "all.safetensors", folder / "acts"
    argv = ["record", "--model", tiny_llama_dir, "--data", data, "--emotion", "all", "--no-progress"]
    code = _cli([*argv, "--out", stats, "--save-activations", acts, "--activation-dtype", "float32"])
    assert code == 0
    return stats, acts


def _cli(argv) -> int:
    from steer_plugin.cli import main

    return main([str(a) for a in argv])


def _from_recording(recording, out: Path, *extra) -> SteeringVector:
    stats, acts = recording
    assert _cli(["build", "--stats", stats, "--activations", acts, "--emotion", "anger", "--out", out, *extra]) == 0
    return SteeringVector.load(out)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _check_direction(vec: SteeringVector, want: np.ndarray, mean_diff: np.ndarray, min_cos: float) -> None:
    """Each row along ``want`` (either sign), toward the emotion, at the mean difference's norm."""
    got = vec.matrix.numpy().astype(np.float64)
    for layer in range(got.shape[0]):
        assert abs(_cos(got[layer], want[layer])) > min_cos, layer
        assert got[layer] @ mean_diff[layer] > 0, layer
        np.testing.assert_allclose(np.linalg.norm(got[layer]), np.linalg.norm(mean_diff[layer]), rtol=1e-5)


def _centre(states) -> np.ndarray:
    return np.mean([states[e].mean(0) for e in EMOTIONS], axis=0)


def _logistic_regression(pos: np.ndarray, negs: list[np.ndarray], steps: int = 30000) -> np.ndarray:
    """Gradient descent on the balanced, L2 (1.0, intercept free) log-loss of standardised features; the
    weights divided by the features' std (raw space)."""
    x = np.concatenate([pos, *negs])
    n = len(x)
    y = np.r_[np.ones(len(pos)), np.zeros(n - len(pos))]
    w = np.concatenate(
        [np.full(len(pos), n / 2 / len(pos))] + [np.full(len(c), n / 2 / len(negs) / len(c)) for c in negs]
    )
    sd = x.std(0)
    z = np.c_[(x - x.mean(0)) / sd, np.ones(n)]
    reg = np.r_[np.ones(z.shape[1] - 1), 0.0]
    lipschitz = 0.25 * np.linalg.eigvalsh((z.T * w) @ z).max() + 1.0
    beta = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-z @ beta))
        beta -= (z.T @ (w * (p - y)) + reg * beta) / lipschitz
    return beta[:-1] / sd


def test_pca_is_the_first_component_of_paired_differences(tiny_llama_dir, data, states, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "pca.safetensors"
    argv = ["build", "--model", tiny_llama_dir, "--data", data, "--emotion", "anger", "--no-progress"]
    assert _cli([*argv, "--method", "pca", "--seed", "3", "--out", out]) == 0
    assert not list((tmp_path / "tmp").iterdir())  # the temporary activations are gone
    vec = SteeringVector.load(out)
    anger, neutral = states["anger"], states["neutral"]
    rng = np.random.default_rng(3)  # the documented pairing: both shuffled, paired by index, truncated
    t, b = rng.permutation(len(anger)), rng.permutation(len(neutral))
    n = min(len(t), len(b))
    diffs = anger[t[:n]] - neutral[b[:n]]
    want = np.stack([np.linalg.svd(diffs[:, layer], full_matrices=False)[2][0] for layer in range(diffs.shape[1])])
    _check_direction(vec, want, anger.mean(0) - neutral.mean(0), 0.999)
    m = vec.metadata
    assert (m["method"], m["centre"], m["neutral_pcs"], m["pair_seed"]) == ("pca", "none", 0, 3)
    assert (m["pool"], m["text_source"], m["counts"]) == ("last", "goemotions", {"anger": 9, "neutral": 11})


def test_probe_is_a_logistic_regression_direction(states, recording, tmp_path):
    vec = _from_recording(recording, tmp_path / "probe.safetensors", "--method", "probe")
    anger, neutral = states["anger"], states["neutral"]
    n_layers = anger.shape[1]
    want = np.stack([_logistic_regression(anger[:, i], [neutral[:, i]]) for i in range(n_layers)])
    _check_direction(vec, want, anger.mean(0) - neutral.mean(0), 0.99)
    assert vec.metadata["method"] == "probe" and "pair_seed" not in vec.metadata


def test_centre_emotions_is_the_mean_of_the_class_means(states, recording, tmp_path):
    vec = _from_recording(recording, tmp_path / "c.safetensors", "--centre", "emotions")
    want = states["anger"].mean(0) - _centre(states)
    np.testing.assert_allclose(vec.matrix.numpy(), want, atol=1e-5, rtol=0)
    m = vec.metadata
    assert m["centre"] == "emotions" and m["method"] == "mean"
    assert m["counts"] == {"anger": 9, "neutral": 11, **{e: SIZES.get(e, 3) for e in EMOTIONS}}


def test_pca_and_probe_against_the_emotions(states, recording, tmp_path):
    centre = _centre(states)
    anger = states["anger"]
    mean_diff = anger.mean(0) - centre
    pca = _from_recording(recording, tmp_path / "p.safetensors", "--method", "pca", "--centre", "emotions")
    want = np.stack([np.linalg.svd(anger[:, i] - centre[i])[2][0] for i in range(anger.shape[1])])
    _check_direction(pca, want, mean_diff, 0.999)
    probe = _from_recording(recording, tmp_path / "q.safetensors", "--method", "probe", "--centre", "emotions")
    others = [e for e in EMOTIONS if e != "anger"]  # one-vs-rest, every other emotion weighing the same
    want = np.stack([_logistic_regression(anger[:, i], [states[e][:, i] for e in others]) for i in range(3)])
    _check_direction(probe, want, mean_diff, 0.99)


@pytest.mark.parametrize("centre", ["none", "emotions"])
def test_neutral_pcs_are_projected_out(states, recording, tmp_path, centre):
    # top_k keeping every neuron: the projection comes before the mask, so the row is the projected difference
    recipe = ["--neutral-pcs", "3", "--centre", centre, "--method", "top_k", "--top-k", "32"]
    vec = _from_recording(recording, tmp_path / "n.safetensors", *recipe)
    reference = states["neutral"].mean(0) if centre == "none" else _centre(states)
    mean_diff = states["anger"].mean(0) - reference
    got = vec.matrix.numpy().astype(np.float64)
    for layer in range(got.shape[0]):
        neutral = states["neutral"][:, layer]
        pcs = np.linalg.svd(neutral - neutral.mean(0), full_matrices=False)[2][:3]
        assert np.abs(pcs @ got[layer]).max() < 1e-5 * np.linalg.norm(got[layer])
        want = mean_diff[layer] - pcs.T @ (pcs @ mean_diff[layer])
        np.testing.assert_allclose(got[layer], want, atol=1e-5, rtol=0)
    assert vec.metadata["neutral_pcs"] == 3 and vec.metadata["centre"] == centre


def test_recording_in_build_equals_the_saved_recording(tiny_llama_dir, data, recording, tmp_path):
    """One recording with its activations serves every recipe: building from it is building from scratch."""
    out = tmp_path / "a.safetensors"
    argv = ["build", "--model", tiny_llama_dir, "--data", data, "--emotion", "anger", "--no-progress", "--out", out]
    assert _cli([*argv, "--method", "probe", "--neutral-pcs", "2"]) == 0
    again = _from_recording(recording, tmp_path / "b.safetensors", "--method", "probe", "--neutral-pcs", "2")
    np.testing.assert_allclose(SteeringVector.load(out).matrix.numpy(), again.matrix.numpy(), atol=1e-5, rtol=0)


def test_train_vector_takes_the_recipe(tiny_llama_dir, data, recording, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steer_plugin.vectors.train import train_vector

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    vec = train_vector(model, tok, "anger", data=data, method="pca", centre="emotions", seed=1, progress=False)
    same = _from_recording(recording, tmp_path / "p.safetensors", "--method", "pca", "--centre", "emotions")
    np.testing.assert_allclose(vec.matrix.numpy(), same.matrix.numpy(), atol=1e-5, rtol=0)
    assert (vec.metadata["method"], vec.metadata["centre"]) == ("pca", "emotions")


def test_recipe_metadata_is_validated_and_old_files_still_load(tmp_path):
    for meta, field in [
        ({"centre": "neutral"}, "centre"),
        ({"neutral_pcs": -1}, "neutral_pcs"),
        ({"neutral_pcs": 1.5}, "neutral_pcs"),
        ({"pool": 3}, "pool"),
        ({"text_source": ["goemotions"]}, "text_source"),
        ({"text_source": "wiki"}, "text_source"),
        ({"pair_seed": "x"}, "pair_seed"),
    ]:
        assert (metadata_problem(meta) or "").startswith(f"{field}:"), meta
    ok = {"method": "pca", "centre": "emotions", "neutral_pcs": 3, "pool": "last", "text_source": "goemotions"}
    assert metadata_problem(ok) is None
    old = tmp_path / "old.safetensors"
    SteeringVector(torch.ones(3, 4), {"emotion": "anger", "method": "mean"}).save(old)
    assert "centre" not in SteeringVector.load(old).metadata


def test_bad_recipes_are_one_line_errors(tiny_llama_dir, recording, tmp_path, capsys):
    stats, acts = recording
    tiny = save_tiny_stats(tmp_path / "tiny.safetensors")  # anger and neutral only, 5 texts each
    out = tmp_path / "v.safetensors"
    for argv, needle in [
        (["--stats", stats, "--centre", "neutral"], "unknown --centre 'neutral'; use one of none, emotions"),
        (["--stats", stats, "--neutral-pcs", "-1"], "--neutral-pcs must be an integer >= 0"),
        (["--stats", stats, "--method", "pca"], "--method pca needs per-text states: give --activations DIR"),
        (["--stats", stats, "--neutral-pcs", "2"], "--neutral-pcs 2 needs per-text states"),
        (["--emotion", "anger", "--model", tiny_llama_dir, "--activations", acts], "--activations goes with --stats"),
        (["--stats", stats, "--method", "probe", "--top-k", "3"], "--top-k only applies to --method top_k"),
        (["--stats", tiny, "--centre", "emotions"], "needs all 27 emotions recorded"),
        (["--stats", tiny, "--method", "pca", "--activations", acts], "does not match the statistics"),
        (["--stats", stats, "--activations", acts, "--neutral-pcs", "11"], "needs at least 12 baseline texts"),
        (["--stats", stats, "--activations", tmp_path, "--method", "pca"], "no activations of class 'anger'"),
    ]:
        code, _, err = run_cli(["build", "--emotion", "anger", *argv, "--out", out], capsys)
        assert_one_line_error(code, err, "steer build: error:", needle)
        assert not out.exists()
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error: the usage, then the one error line
        run_cli(["build", "--stats", stats, "--emotion", "anger", "--method", "pcaa", "--out", out], capsys)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --method: invalid choice: 'pcaa'" in err and not out.exists()


def test_run_builds_its_missing_vectors_with_the_recipe(tiny_llama_dir, data, recording, tmp_path):
    """`steer run --method pca,probe --centre emotions --neutral-pcs 2`: one recording, each vector as `build` makes."""
    from steer_plugin.model.loading import ModelOptions
    from steer_plugin.study.run import _build_missing
    from steer_plugin.vectors.recipe import Recipe
    from steer_plugin.vectors.request import RecordRequest
    from steer_plugin.vectors.vector import default_vector_path

    recipes = [Recipe(m, centre="emotions", neutral_pcs=2) for m in ("pca", "probe")]
    paths = {("anger", r): tmp_path / default_vector_path("tiny", "anger", r) for r in recipes}
    assert paths["anger", recipes[0]].name == "anger-pca-emotions-npc2.safetensors"
    request = RecordRequest(model=ModelOptions(tiny_llama_dir), emotion="anger", data_dir=str(data), progress=False)
    _build_missing(paths, request, progress=False)
    for (_, recipe), path in paths.items():
        want = _from_recording(
            recording,
            tmp_path / f"{recipe.method}.safetensors",
            "--method",
            recipe.method,
            "--centre",
            "emotions",
            "--neutral-pcs",
            "2",
        )
        np.testing.assert_allclose(SteeringVector.load(path).matrix.numpy(), want.matrix.numpy(), atol=1e-5, rtol=0)


def test_labels_and_controls_name_the_recipe():
    """Leaderboard labels tell recipes apart, and a control's label is its vector's (old recipes unchanged)."""
    from steer_plugin.study.rows import _describe
    from steer_plugin.vectors.controls import random_like

    centred = {"emotion": "anger", "method": "pca", "centre": "emotions", "neutral_pcs": 3}
    plain = {"emotion": "anger", "method": "top_k", "top_k": 20, "centre": "none", "neutral_pcs": 0}
    for meta, label in [(centred, "anger (pca-emotions-npc3)"), (plain, "anger (top_k-20)")]:
        assert _describe(meta, "x")[0] == label
        control = random_like(SteeringVector(torch.ones(3, 4), meta), 0)
        assert _describe(control.metadata["control_of"], "x")[0] == label
    assert not {"centre", "neutral_pcs"} & set(
        random_like(SteeringVector(torch.ones(3, 4), plain), 0).metadata["control_of"]
    )


def test_one_name_scheme_for_every_recipe():
    """Default file names and leaderboard labels spell a recipe one way; the shipped default's name is as before."""
    from steer_plugin.study.rows import _describe
    from steer_plugin.vectors.controls import random_like
    from steer_plugin.vectors.recipe import Recipe
    from steer_plugin.vectors.vector import default_vector_path

    for kwargs, name in [
        ({"method": "top_k", "top_k": 20}, "anger-top_k-20"),
        ({"method": "mean"}, "anger-mean"),
        ({"method": "mean", "pool": "last"}, "anger-mean"),
        ({"method": "mean", "pool": "mean"}, "anger-mean-pool-mean"),
        ({"method": "pca", "centre": "emotions", "neutral_pcs": 3}, "anger-pca-emotions-npc3"),
        ({"method": "mean", "text_source": "generated"}, "anger-mean-generated"),
        ({"method": "pca", "text_source": "generated", "pool": "mean"}, "anger-pca-generated"),
        ({"method": "probe", "text_source": "generated", "pool": "last"}, "anger-probe-generated-pool-last"),
        ({"method": "top_k", "top_k": 5, "neutral_pcs": 2, "pool": "mean"}, "anger-top_k-5-npc2-pool-mean"),
    ]:
        meta = {"emotion": "anger", **kwargs}
        recipe = Recipe.of(meta)
        assert recipe is not None
        assert default_vector_path("tiny", "anger", recipe) == Path("vectors/tiny") / f"{name}.safetensors"
        label = f"anger ({name.removeprefix('anger-')})"
        assert _describe(meta, "x")[0] == label
        assert _describe(random_like(SteeringVector(torch.ones(3, 4), meta), 0).metadata["control_of"], "x")[0] == label
