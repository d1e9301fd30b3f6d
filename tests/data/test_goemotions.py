"""GoEmotions data layer: parsing, class selection, sampling, errors.

Expected numbers come from hand-counting the tiny fixture, from the shared data README, or from an
independent pure-csv reference computation in this file; never from steer_plugin.data.goemotions or .selection themselves.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from steer_plugin.data import goemotions as data
from steer_plugin.data.goemotions import EKMAN, LABELS, Example, load_goemotions, resolve_target, valid_targets
from steer_plugin.data.selection import matches, select_all, select_texts
from steer_plugin.errors import SteerError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goemotions"


def shared_goemotions() -> Path:
    root = os.environ.get("STEER_SHARED")
    if not root:
        pytest.skip("STEER_SHARED is not set (path of the shared data folder)")
    path = Path(root) / "data" / "goemotions"
    if not path.is_dir():
        pytest.skip(f"{path} does not exist")
    return path


@pytest.fixture(scope="module")
def train() -> list[Example]:
    return load_goemotions("train", FIXTURE)


# --------------------------------------------------------------------------- names


def test_builtin_names_match_fixture_copies_of_upstream_files():
    names = (FIXTURE / "emotions.txt").read_text(encoding="utf-8").split("\n")
    assert tuple(names) == LABELS and len(LABELS) == 28 and LABELS[27] == "neutral"
    upstream = json.loads((FIXTURE / "ekman_mapping.json").read_text(encoding="utf-8"))
    assert {g: tuple(m) for g, m in upstream.items()} == EKMAN


def test_builtin_names_match_shared_files():
    folder = shared_goemotions()
    assert tuple((folder / "emotions.txt").read_text(encoding="utf-8").split("\n")) == LABELS
    upstream = json.loads((folder / "ekman_mapping.json").read_text(encoding="utf-8"))
    assert {g: tuple(m) for g, m in upstream.items()} == EKMAN


def test_valid_targets_and_resolve():
    targets = valid_targets()
    assert targets[:28] == list(LABELS)
    groups = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
    assert targets[28:] == [f"ekman:{g}" for g in groups]
    assert set(resolve_target("anger")) == {"anger"}
    for spelling in ("ekman:anger", "EKMAN:Anger", "ekman_anger", " Ekman_ANGER "):
        assert set(resolve_target(spelling)) == {"anger", "annoyance", "disapproval"}
    assert set(resolve_target("Neutral")) == {"neutral"}


def test_unknown_emotion_lists_valid_names_on_one_line():
    with pytest.raises(SteerError) as err:
        resolve_target("angr")
    msg = str(err.value)
    assert "\n" not in msg and "'angr'" in msg
    for name in [*LABELS, "ekman:surprise"]:
        assert name in msg
    with pytest.raises(SteerError, match="ekman:joy"):
        resolve_target("ekman:happiness")
    with pytest.raises(SteerError):
        select_texts([Example("x", ("anger",), "1")], "rage")


# --------------------------------------------------------------------------- local parsing


def test_fixture_parsing_quotes_and_whitespace(train):
    assert len(train) == 18
    by_id = {ex.id: ex for ex in train}
    # doubled inner quotes are unescaped and the enclosing quotes removed, like the hub texts
    assert by_id["f02"].text == 'He said "stop" and I was furious.'
    assert by_id["f11"].text == 'Quote at the end "like this"'
    assert by_id["f13"].text == 'She said "no" '  # space inside the quotes is kept
    assert by_id["f12"].text == "Trailing space kept "  # texts are never stripped
    assert by_id["f03"].labels == ("annoyance", "disapproval")
    assert by_id["f04"].labels == ("anger", "amusement")  # file order kept
    assert by_id["f05"] == Example("The bus comes at noon.", ("neutral",), "f05")


def test_dev_and_validation_are_the_same_split():
    dev = load_goemotions("dev", FIXTURE)
    assert dev == load_goemotions("validation", FIXTURE) == load_goemotions("VALIDATION", FIXTURE)
    assert [ex.id for ex in dev] == ["d01", "d02", "d03", "d04"]
    assert dev[1].text == 'A "dev" text.'
    assert [ex.id for ex in load_goemotions("test", FIXTURE)] == ["t01", "t02", "t03"]


def test_bad_split():
    with pytest.raises(SteerError, match=r"train, validation \(or dev\), test") as err:
        load_goemotions("training", FIXTURE)
    assert "\n" not in str(err.value)
    with pytest.raises(SteerError, match="split"):
        select_texts(load_goemotions("train", FIXTURE), "anger", split="val")


def _copy_fixture(dst: Path) -> Path:
    dst.mkdir()
    for f in FIXTURE.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize(
    "name, content, split, pattern",
    [
        ("train.tsv", None, "train", "missing train.tsv"),
        ("dev.tsv", None, "dev", "missing dev.tsv"),
        ("emotions.txt", None, "test", "missing emotions.txt"),
        ("emotions.txt", "anger\nneutral", "train", "expected the 28 GoEmotions names"),
        ("train.tsv", "text only\t2\n", "train", r"train.tsv:1: expected 3 tab-separated"),
        ("train.tsv", "ok\t2\ta\nbad\t2,x\tb\n", "train", r"train.tsv:2: bad label ids '2,x'"),
        ("train.tsv", "bad\t28\tb\n", "train", "bad label ids '28'"),
        ("train.tsv", "bad\t\tb\n", "train", "bad label ids ''"),
        ("train.tsv", "", "train", "has no rows"),
        ("test.tsv", b"\xff\xfe bad bytes\t2\tx\n", "test", "cannot read"),
    ],
)
def test_missing_or_corrupt_folder_files(tmp_path, name, content, split, pattern):
    folder = _copy_fixture(tmp_path / "ge")
    if content is None:
        (folder / name).unlink()
    elif isinstance(content, bytes):
        (folder / name).write_bytes(content)
    else:
        (folder / name).write_text(content, encoding="utf-8")
    with pytest.raises(SteerError, match=pattern) as err:
        load_goemotions(split, folder)
    assert "\n" not in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(SteerError, match="does not exist"):
        load_goemotions("train", tmp_path / "nope")


# --------------------------------------------------------------------------- hub rows


def test_hub_rows_convert_to_examples():
    rows = [
        {"text": 'He said "stop" ', "labels": [2], "id": "a1"},
        {"text": "mixed", "labels": [3, 27], "id": "a2"},
    ]
    assert data.examples_from_hub_rows(rows) == [
        Example('He said "stop" ', ("anger",), "a1"),
        Example("mixed", ("annoyance", "neutral"), "a2"),
    ]
    with pytest.raises(SteerError, match="not in 0..27"):
        data.example_from_hub_row({"text": "x", "labels": [28], "id": "b"})
    with pytest.raises(SteerError, match="lacks text/labels/id"):
        data.example_from_hub_row({"text": "x", "labels": [1]})


def test_hub_loader_with_a_local_dataset_object(monkeypatch):
    # The hub itself is unreachable here; a real datasets.Dataset with the hub's features stands in.
    datasets = pytest.importorskip("datasets")
    seq = getattr(datasets, "List", None) or datasets.Sequence
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "labels": seq(datasets.ClassLabel(names=list(LABELS))),
            "id": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"text": ["a", 'b "q"'], "labels": [[2], [27, 6]], "id": ["x", "y"]}, features=features
    )
    calls = []

    def fake_load(path, name, split):
        calls.append((path, name, split))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    got = load_goemotions("dev")
    assert calls == [("google-research-datasets/go_emotions", "simplified", "validation")]
    assert got == [Example("a", ("anger",), "x"), Example('b "q"', ("neutral", "confusion"), "y")]

    def failing_load(*a, **k):
        raise ConnectionError("offline\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", failing_load)
    with pytest.raises(SteerError, match="cannot load google-research-datasets/go_emotions") as err:
        load_goemotions("train")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- selection rules


def test_matches_single_emotion():
    assert matches(("anger",), "anger")
    assert not matches(("anger", "amusement"), "anger")
    assert matches(("anger", "amusement"), "anger", "any")
    assert not matches((), "anger", "exclusive") and not matches((), "anger", "any")
    assert matches(("neutral",), "neutral") and not matches(("neutral", "confusion"), "neutral")
    with pytest.raises(SteerError, match="exclusive, any"):
        matches(("anger",), "anger", "all")


def test_matches_ekman_groups():
    assert matches(("annoyance", "disapproval"), "ekman:anger")  # all labels inside the group
    assert matches(("anger",), "ekman_anger")
    assert not matches(("anger", "amusement"), "ekman:anger")  # amusement is joy
    assert matches(("anger", "amusement"), "ekman:anger", "any")
    assert matches(("anger", "amusement"), "ekman:joy", "any")
    assert not matches(("neutral",), "ekman:joy", "any")
    assert not matches(("anger", "neutral"), "ekman:anger")  # neutral is in no group
    assert matches(("surprise", "realization"), "ekman:surprise")


def test_select_texts_exclusive_on_fixture(train):
    sel = select_texts(train, "anger")
    assert sel.target == "anger" and sel.baseline == "neutral"
    # hand count: anger-only rows f01 f02 f13 f17; neutral-only rows f05 f06 f07 f12
    assert sel.classes["anger"] == [
        "I am so angry about this.", 'He said "stop" and I was furious.', 'She said "no" ',
        "I am so angry about this.",
    ]  # fmt: skip
    assert sel.classes["neutral"] == [
        "The bus comes at noon.", "The bus comes at noon.", "It is a table.", "Trailing space kept ",
    ]  # fmt: skip
    assert sel.counts() == {"anger": 4, "neutral": 4}
    assert sel.target_texts is sel.classes["anger"]


def test_select_texts_any_and_ekman_on_fixture(train):
    assert select_texts(train, "anger", selection="any").counts() == {"anger": 6, "neutral": 5}
    # ekman:anger exclusive: the 4 anger rows + f03 (annoyance, disapproval)
    assert select_texts(train, "Ekman_Anger").counts() == {"ekman:anger": 5, "neutral": 4}
    # any: + f04 (anger, amusement) + f18 (love, anger)
    assert select_texts(train, "ekman:anger", selection="any").counts()["ekman:anger"] == 7
    # joy exclusive: f10 gratitude, f11 approval; any adds f04 amusement, f18 love
    assert select_texts(train, "ekman:joy").counts()["ekman:joy"] == 2
    assert select_texts(train, "ekman:joy", selection="any").counts()["ekman:joy"] == 4
    # the baseline follows the same rule and may be any class
    sel = select_texts(train, "ekman:fear", baseline="ekman:sadness")
    assert sel.counts() == {"ekman:fear": 1, "ekman:sadness": 1}
    assert sel.members["ekman:fear"] == ("fear", "nervousness")


def test_empty_selection_and_bad_parameters(train):
    with pytest.raises(SteerError, match="no train texts for class 'grief'.*selection='any'"):
        select_texts(train, "grief")  # grief only occurs with sadness (f16)
    assert select_texts(train, "grief", selection="any").counts()["grief"] == 1
    with pytest.raises(SteerError, match="no train texts for class 'pride'"):
        select_texts(train, "pride", selection="any")
    with pytest.raises(SteerError, match="same class"):
        select_texts(train, "neutral")
    with pytest.raises(SteerError, match="no GoEmotions examples"):
        select_texts([], "anger")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(SteerError, match="max_per_class"):
            select_texts(train, "anger", max_per_class=bad)
    with pytest.raises(SteerError, match="seed"):
        select_texts(train, "anger", seed="1")


def test_dedupe(train):
    sel = select_texts(train, "anger", dedupe=True)
    assert sel.counts() == {"anger": 3, "neutral": 3}
    assert sel.classes["anger"][0] == "I am so angry about this."
    assert len(set(sel.classes["neutral"])) == 3
    assert sel.dedupe


def test_max_per_class_is_deterministic_and_seeded():
    rows = [Example(f"angry {i}", ("anger",), str(i)) for i in range(200)]
    rows += [Example(f"calm {i}", ("neutral",), f"n{i}") for i in range(50)]
    a = select_texts(rows, "anger", max_per_class=20, seed=0)
    b = select_texts(list(rows), "anger", max_per_class=20, seed=0)
    c = select_texts(rows, "anger", max_per_class=20, seed=1)
    assert a.classes == b.classes
    assert a.counts() == {"anger": 20, "neutral": 20}
    assert a.classes["anger"] != c.classes["anger"]
    pool = {ex.text for ex in rows}
    assert set(a.classes["anger"]) <= pool and len(set(a.classes["anger"])) == 20
    # subsets stay in dataset order
    assert a.classes["anger"] == sorted(a.classes["anger"], key=lambda t: int(t.split()[1]))
    # fewer rows than the cap: all of them
    assert select_texts(rows, "anger", max_per_class=500).counts() == {"anger": 200, "neutral": 50}


# --------------------------------------------------------------------------- all classes at once


def _class_counts(memberships) -> Counter:
    return Counter(name for classes in memberships for name in classes)


@pytest.mark.parametrize("selection", ["exclusive", "any"])
@pytest.mark.parametrize("dedupe", [False, True])
@pytest.mark.parametrize("cap", [None, 1, 2])
def test_select_all_agrees_with_select_texts(train, selection, dedupe, cap):
    texts, memberships = select_all(train, selection, max_per_class=cap, seed=3, dedupe=dedupe)
    assert len(texts) == len(set(texts)) == len(memberships)
    counts = _class_counts(memberships)
    for name in valid_targets():
        baseline = "anger" if name == "neutral" else "neutral"  # both non-empty in the fixture
        try:
            expected = select_texts(train, name, baseline, selection, cap, 3, dedupe).target_texts
        except SteerError:  # empty target class
            expected = []
        assert counts[name] == len(expected), name
        got = [t for t, cls in zip(texts, memberships) for _ in range(cls.count(name))]
        assert Counter(got) == Counter(expected), name
        if cap is not None:
            assert counts[name] <= cap


def test_select_all_memberships_on_fixture(train):
    texts, memberships = select_all(train)
    by_text = dict(zip(texts, memberships))
    # duplicated row (f01, f17) runs once and counts twice for each of its classes
    assert by_text["I am so angry about this."] == ("anger", "anger", "ekman:anger", "ekman:anger")
    assert by_text["This is annoying and wrong."] == ("ekman:anger",)
    assert by_text["I'm scared and nervous."] == ("ekman:fear",)
    assert "Angry but also kind of funny." not in by_text  # anger+amusement: no exclusive class
    assert texts[0] == "I am so angry about this."  # order of first appearance
    texts_any, mem_any = select_all(train, "any", dedupe=True)
    by_text = dict(zip(texts_any, mem_any))
    expected = ("amusement", "anger", "ekman:anger", "ekman:joy")
    assert by_text["Angry but also kind of funny."] == expected
    assert by_text["I am so angry about this."] == ("anger", "ekman:anger")
    assert len(texts_any) == 16  # 18 rows, two duplicated texts


# --------------------------------------------------------------------------- shared data


def _reference_rows(folder: Path, split_file: str) -> list[tuple[str, frozenset[str]]]:
    """Independent reader: csv module + emotions.txt, no steer_plugin code."""
    names = (folder / "emotions.txt").read_text(encoding="utf-8").split("\n")
    with open(folder / split_file, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return [(t, frozenset(names[int(i)] for i in ids.split(","))) for t, ids, _ in rows]


def _reference_count(rows, members: set[str], selection: str) -> int:
    if selection == "exclusive":
        return sum(1 for _, ls in rows if ls and all(lab in members for lab in ls))
    return sum(1 for _, ls in rows if any(lab in members for lab in ls))


def test_reproduces_reference_counts_on_shared_train():
    folder = shared_goemotions()
    train = load_goemotions("train", folder)
    assert len(train) == 43410
    assert select_texts(train, "anger").counts() == {"anger": 1025, "neutral": 12823}
    # README: 14219 train rows contain neutral, 7102 are multi-label
    assert select_texts(train, "anger", selection="any").counts()["neutral"] == 14219
    assert sum(1 for ex in train if len(ex.labels) > 1) == 7102
    # README: 1097 train texts are CSV-quoted; naive tab splitting would keep their quotes
    raw = (folder / "train.tsv").read_text(encoding="utf-8").splitlines()
    naive = [line.split("\t")[0] for line in raw]
    assert sum(1 for ex, n in zip(train, naive) if ex.text != n) == 1097
    assert all(ex.id == line.split("\t")[-1] for ex, line in zip(train, raw))


@pytest.mark.parametrize(
    "split, file, rows, anger, neutral, neutral_any",
    [("validation", "dev.tsv", 5426, 109, 1592, 1766), ("test", "test.tsv", 5427, 131, 1606, 1787)],
)
def test_shared_dev_and_test_counts(split, file, rows, anger, neutral, neutral_any):
    folder = shared_goemotions()
    exs = load_goemotions(split, folder)
    assert len(exs) == rows
    assert select_texts(exs, "anger", split=split).counts() == {"anger": anger, "neutral": neutral}
    assert select_texts(exs, "fear", selection="any").counts()["neutral"] == neutral_any
    if split == "validation":
        assert load_goemotions("dev", folder) == exs


def test_shared_counts_match_independent_reference():
    folder = shared_goemotions()
    ref = _reference_rows(folder, "train.tsv")
    train = load_goemotions("train", folder)
    assert [ex.text for ex in train] == [t for t, _ in ref]
    texts, memberships = select_all(train, "exclusive")
    counts = _class_counts(memberships)
    texts_any, memberships_any = select_all(train, "any")
    counts_any = _class_counts(memberships_any)
    for name in ["anger", "joy", "neutral", "grief", *(f"ekman:{g}" for g in EKMAN)]:
        members = set(EKMAN[name[6:]]) if name.startswith("ekman:") else {name}
        assert counts[name] == _reference_count(ref, members, "exclusive"), name
        assert counts_any[name] == _reference_count(ref, members, "any"), name
    assert counts["anger"] == 1025 and counts["neutral"] == 12823
    # every row in some exclusive class runs once per distinct text
    in_some_class = {t for t, ls in ref if len(ls) == 1 or any(ls <= set(g) for g in EKMAN.values())}
    assert len(texts) == len(in_some_class)


def test_shared_max_per_class_and_dedupe():
    folder = shared_goemotions()
    train = load_goemotions("train", folder)
    a = select_texts(train, "ekman:anger", max_per_class=100, seed=7)
    assert a.counts() == {"ekman:anger": 100, "neutral": 100}
    assert a.classes == select_texts(train, "ekman:anger", max_per_class=100, seed=7).classes
    ref = _reference_rows(folder, "train.tsv")
    neutral_texts = [t for t, ls in ref if ls == {"neutral"}]
    deduped = select_texts(train, "anger", dedupe=True)
    assert deduped.counts()["neutral"] == len(set(neutral_texts))
    assert deduped.counts()["neutral"] < 12823
