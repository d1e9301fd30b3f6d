"""`steer record/build/analyze/list/export/data` on the tiny GoEmotions fixture and a tiny Llama, against an
independent reference: the TSV read with the csv module, every text run alone through the HF model with
a forward hook on each block (last token), per-class means in numpy, difference, top-k by |diff|.

Everything runs in-process through ``steer_plugin.cli:main``; bad input must give exit code 2 and one
line on stderr (no traceback) and leave no output file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from steer_plugin.cli import main
from steer_plugin.vectors.stats import HiddenStateStats
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.tiny import hook_last_token_states, read_goemotions_rows

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goemotions"
TOL = 1e-5


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    """text -> [L, H] float64 hook states, and the fixture rows (text, label set)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = read_goemotions_rows(FIXTURE / "train.tsv")
    texts = list(dict.fromkeys(t for t, _ in rows))
    states = hook_last_token_states(model, tok, texts)
    return {t: s for t, s in zip(texts, states)}, rows


def _class_rows(reference, members: set[str]) -> np.ndarray:
    """Exclusive selection: every label of the row is in the class (for one emotion: exactly it)."""
    states, rows = reference
    return np.stack([states[t] for t, labels in rows if labels and labels <= members])


def _reference_vector(reference, emotion: str, k: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    diff = _class_rows(reference, {emotion}).mean(0) - _class_rows(reference, {"neutral"}).mean(0)
    if k is None:
        return diff, None
    mask = np.zeros(diff.shape, dtype=bool)
    for layer in range(diff.shape[0]):
        mask[layer, np.argsort(-np.abs(diff[layer]))[:k]] = True
    return np.where(mask, diff, 0.0), mask


def _build(model_dir, out, *extra, emotion="anger"):
    return [
        "build",
        "--model",
        model_dir,
        "--data",
        FIXTURE,
        "--emotion",
        emotion,
        "--split",
        "train",
        "--no-progress",
        "--out",
        out,
        *extra,
    ]


@pytest.mark.parametrize("emotion, k", [("anger", 5), ("gratitude", 1), ("anger", 32)])
def test_build_top_k_equals_reference(tiny_llama_dir, reference, tmp_path, capsys, emotion, k):
    out = tmp_path / "v.safetensors"
    code, stdout, _ = run_cli(_build(tiny_llama_dir, out, "--method", "top_k", "--top-k", k, emotion=emotion), capsys)
    assert code == 0 and str(out) in stdout
    vec = SteeringVector.load(out)
    want, mask = _reference_vector(reference, emotion, k)
    np.testing.assert_array_equal(vec.mask.numpy(), mask)
    np.testing.assert_allclose(vec.matrix.numpy(), want, atol=TOL, rtol=0)
    n_target = len(_class_rows(reference, {emotion}))
    assert vec.metadata["counts"] == {emotion: n_target, "neutral": 4}
    assert vec.metadata["method"] == "top_k" and vec.metadata["top_k"] == k
    assert vec.metadata["block_path"] == "model.layers" and vec.metadata["model"] == tiny_llama_dir


def test_build_mean_and_layers(tiny_llama_dir, reference, tmp_path, capsys):
    want, _ = _reference_vector(reference, "anger")
    out = tmp_path / "mean.safetensors"
    assert run_cli(_build(tiny_llama_dir, out, "--method", "mean"), capsys)[0] == 0
    vec = SteeringVector.load(out)
    assert vec.mask is None and vec.metadata["top_k"] is None
    np.testing.assert_allclose(vec.matrix.numpy(), want, atol=TOL, rtol=0)
    # --layers keeps only those rows; padding side and batch size do not change the result
    out2 = tmp_path / "sub.safetensors"
    extra = ["--layers", "0,2", "--batch-size", "3", "--padding-side", "left"]
    assert run_cli(_build(tiny_llama_dir, out2, *extra), capsys)[0] == 0
    sub = SteeringVector.load(out2)
    keep = np.array([1.0, 0.0, 1.0])[:, None]
    np.testing.assert_allclose(sub.matrix.numpy(), want * keep, atol=TOL, rtol=0)
    assert sub.nonzero_layers() == [0, 2] and sub.metadata["layers"] == [0, 2]


def test_record_then_build_from_stats_is_the_same_vector(tiny_llama_dir, reference, tmp_path, capsys):
    stats_path = tmp_path / "anger.stats.safetensors"
    code, stdout, _ = run_cli(
        [
            "record",
            "--model",
            tiny_llama_dir,
            "--data",
            FIXTURE,
            "--emotion",
            "anger",
            "--no-progress",
            "--batch-size",
            "3",
            "--out",
            stats_path,
        ],
        capsys,
    )
    assert code == 0 and "anger=4, neutral=4" in stdout
    stats = HiddenStateStats.load(stats_path)
    for name, members in (("anger", {"anger"}), ("neutral", {"neutral"})):
        x = _class_rows(reference, members)
        np.testing.assert_allclose(stats.get(name).mean.numpy(), x.mean(0), atol=TOL, rtol=0)
        np.testing.assert_allclose(stats.get(name).var.numpy(), x.var(0, ddof=1), atol=TOL, rtol=1e-4)
    m = stats.metadata
    assert m["counts"] == {"anger": 4, "neutral": 4} and m["target"] == "anger" and m["split"] == "train"
    assert m["source"] == "local" and m["n_layers"] == 3 and m["architecture"] == "LlamaForCausalLM"

    direct, reused = tmp_path / "direct.safetensors", tmp_path / "reused.safetensors"
    assert run_cli(_build(tiny_llama_dir, direct, "--method", "top_k", "--top-k", 4), capsys)[0] == 0
    # --stats: no --model/--data/--emotion needed, the target comes from the stats file
    assert run_cli(["build", "--stats", stats_path, "--method", "top_k", "--top-k", 4, "--out", reused], capsys)[0] == 0
    a, b = SteeringVector.load(direct), SteeringVector.load(reused)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.matrix, b.matrix, atol=1e-6, rtol=0)
    drop = {"created_at"}
    assert {k: v for k, v in a.metadata.items() if k not in drop} == {
        k: v for k, v in b.metadata.items() if k not in drop
    }

    # --save-stats keeps what build recorded: the same statistics as `steer record`
    saved = tmp_path / "saved.stats.safetensors"
    assert run_cli(_build(tiny_llama_dir, tmp_path / "x.safetensors", "--save-stats", saved), capsys)[0] == 0
    again = HiddenStateStats.load(saved)
    for c in ("anger", "neutral"):
        torch.testing.assert_close(again.get(c).mean, stats.get(c).mean, atol=1e-6, rtol=0)


def test_default_output_path(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_cli(
        [
            "build",
            "--model",
            tiny_llama_dir,
            "--data",
            FIXTURE,
            "--emotion",
            "ekman:anger",
            "--no-progress",
            "--method",
            "top_k",
            "--top-k",
            3,
        ],
        capsys,
    )
    assert code == 0
    slug = Path(tiny_llama_dir).name.lower()
    path = tmp_path / "vectors" / slug / "ekman_anger-top_k-3.safetensors"
    assert path.is_file() and str(Path("vectors") / slug / "ekman_anger-top_k-3.safetensors") in stdout
    assert SteeringVector.load(path).metadata["emotion"] == "ekman:anger"


def test_save_activations_all_classes(tiny_llama_dir, reference, tmp_path, capsys):
    """--emotion all: one .npy per class [N, L, H]; a duplicated text counts (and is stored) twice."""
    acts, stats_path = tmp_path / "acts", tmp_path / "all.safetensors"
    code, _, _ = run_cli(
        [
            "record",
            "--model",
            tiny_llama_dir,
            "--data",
            FIXTURE,
            "--emotion",
            "all",
            "--no-progress",
            "--batch-size",
            "4",
            "--save-activations",
            acts,
            "--activation-dtype",
            "float32",
            "--out",
            stats_path,
        ],
        capsys,
    )
    assert code == 0
    names = [n.strip() for n in (FIXTURE / "emotions.txt").read_text().splitlines() if n.strip()]
    ekman = json.loads((FIXTURE / "ekman_mapping.json").read_text())
    classes = {n: {n} for n in names} | {f"ekman:{g}": set(m) for g, m in ekman.items()}
    _, rows = reference
    expected = {c: m for c, m in classes.items() if any(labels <= m for _, labels in rows)}
    files = {p.stem: p for p in acts.iterdir()}
    assert sorted(files) == sorted(c.replace(":", "_") for c in expected)
    stats = HiddenStateStats.load(stats_path)

    def by_row(a: np.ndarray) -> np.ndarray:  # rows in a canonical order: compare as multisets
        flat = a.reshape(len(a), -1)
        return a[np.lexsort(flat[:, :4].T[::-1])]

    for c, members in expected.items():
        want = _class_rows(reference, members)
        got = np.load(files[c.replace(":", "_")])
        assert got.shape == want.shape and got.dtype == np.float32, c
        np.testing.assert_allclose(by_row(got), by_row(want), atol=TOL, rtol=0, err_msg=c)
        assert stats.get(c).count == len(want)
        np.testing.assert_allclose(stats.get(c).mean.numpy(), want.mean(0), atol=TOL, rtol=0)
    # the fixture has "I am so angry about this." twice (anger) and "The bus comes at noon." twice (neutral)
    assert stats.get("anger").count == 4 and stats.get("neutral").count == 4


def test_data_command_counts(tmp_path, capsys):
    out = tmp_path / "sel.jsonl"
    code, stdout, _ = run_cli(["data", "--data", FIXTURE, "--emotion", "anger", "--out", out], capsys)
    assert code == 0 and "anger" in stdout and "neutral" in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ref = read_goemotions_rows(FIXTURE / "train.tsv")
    for c in ("anger", "neutral"):
        assert [r["text"] for r in rows if r["class"] == c] == [t for t, labels in ref if labels == {c}]


# --- bad input: exit 2, one line, no output file ------------------------------------------------------


def test_wrong_emotion(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    code, _, err = run_cli(_build(tiny_llama_dir, out, emotion="angr"), capsys)
    assert_one_line_error(code, err, "steer build: error:", "unknown emotion 'angr'", "did you mean 'anger'")
    code, _, err = run_cli(
        ["record", "--model", tiny_llama_dir, "--data", FIXTURE, "--emotion", "fear", "--no-progress", "--out", out],
        capsys,
    )  # a label with no exclusive texts here
    assert_one_line_error(code, err, "no train texts for class 'fear'")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def stats_file(tiny_llama_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("stats") / "anger.safetensors"
    assert (
        main(
            [
                "record",
                "--model",
                tiny_llama_dir,
                "--data",
                str(FIXTURE),
                "--emotion",
                "anger",
                "--no-progress",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    return path


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("abc", "bad layer spec 'abc'"),
        ("0-7", "out of range: this model has layers 0-2"),
        ("3", "out of range"),
        ("2-1", "bad layer spec"),
        ("1,,2", "bad layer spec"),
    ],
)
def test_bad_layers(stats_file, tmp_path, capsys, spec, needle):
    out = tmp_path / "v.safetensors"
    code, _, err = run_cli(["build", "--stats", stats_file, "--layers", spec, "--out", out], capsys)
    assert_one_line_error(code, err, "steer build: error:", needle)
    assert not out.exists()


def test_bad_layers_when_recording(tiny_llama_dir, tmp_path, capsys):
    # cli.py checks --layers only after loading the model and recording, so transformers' weight
    # loading bar comes first on stderr; the error is still one line and the last one.
    out = tmp_path / "v.safetensors"
    code, _, err = run_cli(_build(tiny_llama_dir, out, "--layers", "9"), capsys)
    assert code == 2 and "Traceback" not in err
    assert err.count("error:") == 1
    assert err.strip().splitlines()[-1] == "steer build: error: layer(s) [9] out of range: this model has layers 0-2"
    assert not out.exists()


def test_other_build_errors(stats_file, tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    for argv, needle in [
        (["build", "--stats", stats_file, "--method", "top_k", "--out", out], "--top-k K"),
        (["build", "--stats", stats_file, "--method", "top_k", "--top-k", "99", "--out", out], "hidden size 32"),
        (["build", "--stats", stats_file, "--emotion", "joy", "--out", out], "'joy' is not in this stats file"),
        (["build", "--out", out], "give --emotion"),
    ]:
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, needle)
    assert not out.exists()


def _corrupt_vectors(tmp_path: Path, stats_file: Path) -> dict[str, Path]:
    good = tmp_path / "good.safetensors"
    SteeringVector(torch.ones(3, 32), {"emotion": "anger"}).save(good)
    data = good.read_bytes()
    files = {"stats": stats_file}
    for name, content in [("truncated", data[:-16]), ("random", np.random.default_rng(1).bytes(300)), ("empty", b"")]:
        files[name] = tmp_path / f"{name}.safetensors"
        files[name].write_bytes(content)
    from safetensors.torch import save_file

    files["other"] = tmp_path / "model.safetensors"
    save_file({"embed.weight": torch.zeros(4, 4)}, str(files["other"]), metadata={"format": "pt"})
    files["missing"] = tmp_path / "nope.safetensors"
    return files


def test_corrupt_vector_files(stats_file, tmp_path, capsys):
    for name, path in _corrupt_vectors(tmp_path, stats_file).items():
        for fmt in ("lm-eval-steered", "gguf"):
            out = tmp_path / f"out-{name}.{fmt}"
            code, _, err = run_cli(["export", path, "--format", fmt, "--out", out], capsys)
            assert_one_line_error(code, err, "steer export: error:", path.name)
            assert not out.exists()
    code, _, err = run_cli(["export", stats_file, "--format", "gguf", "--out", tmp_path / "x.gguf"], capsys)
    assert_one_line_error(code, err, "not a steer-plugin steering vector", "steer-plugin/stats")


def test_vector_passed_as_stats(tmp_path, capsys):
    vec = tmp_path / "v.safetensors"
    SteeringVector(torch.ones(3, 32)).save(vec)
    for argv in (
        ["build", "--stats", vec, "--out", tmp_path / "o.safetensors"],
        ["analyze", vec, "--emotion", "anger", "--out", tmp_path / "analysis"],
    ):
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "not a steer-plugin stats file", "steer-plugin/vector")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]


def test_list_shows_vectors_and_skips_other_files(stats_file, tmp_path, capsys):
    root = tmp_path / "vectors"
    SteeringVector(torch.ones(3, 32), {"emotion": "anger", "method": "top_k", "top_k": 5, "model": "tiny"}).save(
        root / "tiny" / "anger-top_k-5.safetensors"
    )
    SteeringVector(torch.ones(3, 32), {"emotion": "joy", "method": "mean", "model": "tiny"}).restrict([1]).save(
        root / "tiny" / "joy-mean.safetensors"
    )
    (root / "tiny" / "broken.safetensors").write_bytes(b"garbage")
    (root / "stats.safetensors").write_bytes(stats_file.read_bytes())
    code, stdout, _ = run_cli(["list", root], capsys)
    assert code == 0
    lines = stdout.strip().splitlines()
    assert len(lines) == 4  # header, rule, two vectors
    assert "anger" in lines[2] and "top_k k=5" in lines[2] and "all" in lines[2]
    assert "joy" in lines[3] and " 1 " in f"{lines[3]} " and "broken" not in stdout and "stats" not in stdout
    (tmp_path / "empty").mkdir()  # an empty folder (a folder that does not exist is an error: test_args)
    code, stdout, _ = run_cli(["list", tmp_path / "empty"], capsys)
    assert code == 0 and "no vectors under" in stdout


def test_shared_goemotions_max_per_class(shared, tiny_llama_dir, tmp_path, capsys):
    """Real GoEmotions train split, 40 texts per class (sampled, seeded): counts in the metadata."""
    data = shared / "data" / "goemotions"
    rows = read_goemotions_rows(data / "train.tsv")
    assert sum(labels == {"anger"} for _, labels in rows) > 40  # so the cap applies
    out, stats_path = tmp_path / "v.safetensors", tmp_path / "s.safetensors"
    code, _, _ = run_cli(
        [
            "build",
            "--model",
            tiny_llama_dir,
            "--data",
            data,
            "--emotion",
            "anger",
            "--no-progress",
            "--max-per-class",
            "40",
            "--batch-size",
            "16",
            "--method",
            "top_k",
            "--top-k",
            "8",
            "--save-stats",
            stats_path,
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0
    vec = SteeringVector.load(out)
    assert vec.metadata["counts"] == {"anger": 40, "neutral": 40}
    assert vec.metadata["max_per_class"] == 40 and vec.metadata["split"] == "train"
    stats = HiddenStateStats.load(stats_path)
    assert stats.metadata["counts"] == {"anger": 40, "neutral": 40} and stats.counts() == stats.metadata["counts"]
    assert (vec.mask.sum(1) == 8).all() and torch.isfinite(vec.matrix).all()
