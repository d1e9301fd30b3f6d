"""What steering did, from a finished `steer run` / `steer sweep` folder: summary sentences, the emotion x
label leakage table, the dose-response plot and the report page (report.html) that shows them with the outputs.

Every number comes from the leaderboard's rows and their paired statistics against the baseline
(``steer_plugin.study.paired``: Δ with a 95% paired bootstrap interval over the same documents), so the
sentences say no more than the intervals do: an interval that includes 0 is marked "n.s.".
"""

from __future__ import annotations

from pathlib import Path

from steer_plugin.io.atomic import write_files_atomic
from steer_plugin.io.outputs import check_output_file
from steer_plugin.study.arms import load_study
from steer_plugin.study.dose_response import dose_response_png
from steer_plugin.study.example_outputs import examples_text
from steer_plugin.study.leakage import leakage, leakage_csv, leakage_png
from steer_plugin.study.paired import DEFAULT_RESAMPLES
from steer_plugin.study.report_page import OUTPUT as REPORT_PAGE
from steer_plugin.study.report_page import report_html
from steer_plugin.study.sentences import summary_text

OUTPUTS = ("summary.md", "leakage.csv", "leakage.png", "dose_response.png", REPORT_PAGE)


def write_study(
    folder: str | Path,
    out_dir: str | Path | None = None,
    leakage_budget: float | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[str, list[Path]]:
    """summary.md, leakage.csv/png, dose_response.png and report.html beside the leaderboard; returns the
    summary."""
    root = Path(folder)
    out = Path(out_dir) if out_dir is not None else root
    for name in OUTPUTS:  # before the statistics: a path that cannot be written fails now
        check_output_file(out / name, name)
    study = load_study(root, resamples, seed)
    text = summary_text(study)
    outputs: dict[Path, str | bytes] = {out / "summary.md": text + examples_text(study, seed)}
    table = leakage(study, leakage_budget)
    if table.cells:
        what = f"KL {table.level:g}" if any(a.budget is not None for a in study.arms) else f"alpha {table.level:g}"
        outputs[out / "leakage.csv"] = leakage_csv(table)
        outputs[out / "leakage.png"] = leakage_png(table, what)
    outputs[out / "dose_response.png"] = dose_response_png(study)
    figures = {path.name: data for path, data in outputs.items() if isinstance(data, bytes)}
    outputs[out / REPORT_PAGE] = report_html(study, root, text, figures)
    return text, write_files_atomic(outputs)  # rendered first, written as one set
