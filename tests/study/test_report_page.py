"""report.html: a self-contained page of a run. Escaping is checked by parsing the HTML; the page itself in a
real headless Chromium (Debian's ``chromium`` driven by Playwright), with and without JavaScript."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from steer_plugin.study.paired import compact_row
from steer_plugin.study.report import write_study
from tests.helpers.required import REQUIRE_BROWSER, unavailable
from tests.helpers.study import N_DOCS, vector_entry, write_config

EVIL = '</script><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> & <!-- -->'
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip


class _Page(HTMLParser):
    """The elements of a page, and its visible text (outside scripts and styles)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "script":
            self.scripts.append(data)
        elif self._in is None:
            self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _with_outputs(folder: Path, name: str, rng, evil: bool) -> None:
    """Give a synthetic configuration's anger task prompts, generations and quality scores, and a TruthfulQA MC1
    task whose chosen answers differ from the baseline's on every other question."""
    path = folder / name / "samples_steer_emotion_anger.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["metrics"] += ["no_words", "repetition"]
        row.update(no_words=0.0, repetition=0.9 if evil and i % 3 == 0 else 0.0)
        row["prompt"] = f"Prompt {i} <b>bold?</b>"
        row["generation"] = EVIL if evil else f"plain output {i}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc1 = []
    for i in range(N_DOCS):
        chosen = 1 if evil and i % 2 else 0
        mc1.append({
            "doc_id": i, "doc_hash": f"q{i}", "filter": "none", "metrics": ["acc"], "acc": float(chosen == 0),
            "chosen": chosen, "question": f"Question {i}? <script>q</script>", "choice": ["right", EVIL][chosen],
            "correct": "right",
        })  # fmt: skip
    (folder / name / "samples_truthfulqa_mc1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc1))
    results_file = folder / name / "results.json"
    results = json.loads(results_file.read_text())
    results["results"]["truthfulqa_mc1"] = {"acc,none": float(np.mean([r["acc"] for r in mc1]))}
    results_file.write_text(json.dumps(results))


@pytest.fixture()
def evil_run(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "run"
    write_config(folder, "baseline", None, 0.0, None, rng)
    write_config(folder, "anger", vector_entry("anger"), 0.5, None, rng)
    _with_outputs(folder, "baseline", rng, evil=False)
    _with_outputs(folder, "anger", rng, evil=True)
    return folder


def test_a_malicious_generation_is_escaped(evil_run):
    write_study(evil_run, resamples=1000)
    page = _parse(evil_run / "report.html")
    # the page's own two scripts (the data and the code) and nothing an output could have added
    assert [t for t, _ in page.tags].count("script") == 2
    assert [a for t, a in page.tags if t == "script"][0] == {"type": "application/json", "id": "report-data"}
    assert not any("onerror" in a for _, a in page.tags)
    assert not any(t == "img" and not a.get("src", "").startswith("data:image/png;base64,") for t, a in page.tags)
    # the inline JSON carries the texts unchanged, with no "<" that could close its script
    raw = page.scripts[0]
    assert "<" not in raw and ">" not in raw
    data = json.loads(raw)
    (task,) = data["emotions"]
    assert task["task"] == "steer_emotion_anger" and task["configs"] == ["anger (mean) at alpha 0.5"]
    doc = task["docs"][0]
    assert doc["prompt"] == "Prompt 0 <b>bold?</b>" and doc["outs"][0]["text"] == EVIL
    assert doc["base"]["text"] == "plain output 0" and doc["outs"][0]["bad"] == ["repetition 0.90 > 0.50"]
    assert task["docs"][1]["outs"][0]["bad"] == []
    # the changed TruthfulQA answers are HTML, shown as text
    text = "".join(page.text)
    assert "Question 1? <script>q</script>" in text and EVIL in text
    assert f"{N_DOCS // 2} of {N_DOCS}" in text  # every other answer changed, each from right to wrong


def test_compact_rows_keep_the_chosen_answer():
    full = {
        "doc_id": 3, "doc": {"question": "Q?"}, "target": 0, "filter": "none", "metrics": ["acc"], "acc": 0.0,
        "arguments": [("Q: Q?\nA:", " Yes."), ("Q: Q?\nA:", " No.")], "filtered_resps": [(-2.0, False), (-1.0, True)],
    }  # fmt: skip
    assert compact_row(full) == {
        "doc_id": 3, "filter": "none", "metrics": ["acc"], "acc": 0.0,
        "chosen": 1, "choice": "No.", "question": "Q?", "correct": "Yes.",
    }  # fmt: skip
    generated = {"doc_id": 0, "doc": {"prompt": "Hi"}, "filtered_resps": [{"generation": "Hello"}], "metrics": []}
    assert "chosen" not in compact_row(generated)


# --- in a real browser ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_chat_llama_dir, shared_or_none) -> Path:
    """A real `steer run` of the tiny chat model: its report.html."""
    from steer_plugin.cli import main
    from tests.helpers.classifier import build_goemotions_classifier
    from tests.helpers.tiny import write_goemotions_every_label

    root = tmp_path_factory.mktemp("report_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("STEER_CACHE_DIR", str(root / "cache"))
        args = [
            "run", "--model", tiny_chat_llama_dir, "--emotion", "anger", "--alphas", "0,2", "--limit", "4",
            "--data", str(write_goemotions_every_label(root / "goemotions", {"anger": 5, "neutral": 8})),
            "--classifier", build_goemotions_classifier(root / "clf"), "--batch-size", "4", "--out", str(root / "run"),
        ]  # fmt: skip
        if shared_or_none:
            args += ["--truthfulqa-dir", str(shared_or_none / "data" / "truthfulqa")]
        else:
            args += ["--tasks", "steer_emotion_anger"]
        assert main(args) == 0
    return root / "run" / "report.html"


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        unavailable("the browser tests need playwright (the test extra)", REQUIRE_BROWSER)
    if not Path(CHROMIUM).is_file():
        unavailable(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (Debian) for the browser tests",
                    REQUIRE_BROWSER)  # fmt: skip
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, path: Path, javascript: bool = True):
    page = browser.new_page(java_script_enabled=javascript, viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "request", lambda r: problems.append(f"request: {r.url}") if not r.url.startswith(("file:", "data:")) else None
    )
    page.goto(path.as_uri())
    return page, problems


@pytest.mark.slow
def test_report_page_in_a_browser(tiny_run, browser):
    data = json.loads(_parse(tiny_run).scripts[0])
    page, problems = _open(browser, tiny_run)
    # the leaderboard: baseline, the configuration, its random control, the prompting reference
    names = page.locator("#leaderboard tbody th").all_inner_texts()
    assert names[0] == "baseline" and len(names) == 4 and "asking for anger" in names
    # sorting by a column reorders the rows (by its values, missing last)
    header = page.locator("#leaderboard thead th", has_text="target_prob_fluent Δ")
    header.locator("button").click()
    cells = page.locator("#leaderboard tbody tr td").evaluate_all(
        "(tds, col) => tds.filter(td => td.cellIndex === col).map(td => td.dataset.v)",
        header.evaluate("th => th.cellIndex"),
    )
    values = [float(v) for v in cells if v]
    assert values == sorted(values, reverse=True) and cells[: len(values)] == [c for c in cells if c]
    # the figures are decoded images
    widths = page.locator("figure img").evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 2 and all(w > 100 for w in widths)
    # the sample browser: every prompt, the baseline beside each configuration
    (task,) = data["emotions"]
    articles = page.locator("#sample-list article")
    assert articles.count() == len(task["docs"]) == 4
    assert articles.first.locator(".output").count() == 1 + len(task["configs"])
    # one configuration, only its degenerate outputs: exactly the documents the data says
    config = task["configs"][0]
    page.select_option("#config", label=config)
    page.check("#only-degenerate")
    expected = [d["id"] for d in task["docs"] if d["outs"][0] and d["outs"][0]["bad"]]
    shown = [int(x) for x in articles.evaluate_all("arts => arts.map(a => a.dataset.doc)")]
    assert shown == expected
    assert all(a.locator(".output").count() == 2 for a in articles.all())
    assert page.locator("#shown").inner_text() == f"showing {len(expected)} of 4 prompts"
    # where the score rose most: sorted by the rise
    page.uncheck("#only-degenerate")
    page.check("#rose-most")
    rises = {d["id"]: d["outs"][0]["score"] - d["base"]["score"] for d in task["docs"] if d["outs"][0]}
    shown = [int(x) for x in articles.evaluate_all("arts => arts.map(a => a.dataset.doc)")]
    assert shown == sorted(rises, key=lambda d: -rises[d])
    assert problems == []
    page.close()


@pytest.mark.slow
def test_report_page_without_javascript(tiny_run, browser):
    page, problems = _open(browser, tiny_run, javascript=False)
    assert "Toward anger at alpha 2" in page.locator("#summary").inner_text()
    assert page.locator("#leaderboard tbody tr").count() == 4
    assert page.locator("table.provenance").inner_text().count("not recorded") <= 2
    assert page.locator("#sample-controls").is_hidden()  # the browser's controls need the script
    assert "needs JavaScript" in page.locator("#samples").inner_text()
    assert problems == []
    page.close()
