"""scripts/compare_recipes.py end to end on a tiny chat model: two recipes (one recording each; pca from its
per-text states), one emotion, one KL budget; the table, CSV and plot are written and the CSV's numbers are the
sweep's results files and the study's paired statistics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from steer_plugin.study.arms import load_study
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.tiny import CORPUS, load_script

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goemotions"


def test_recipe_names_and_bad_recipes():
    script = load_script("compare_recipes")
    assert list(script.pick_recipes(None, 20)) == [
        "top_k-20", "mean", "mean-pool-mean", "pca", "probe", "mean-emotions-npc3", "mean-generated", "pca-generated"
    ]  # fmt: skip
    with pytest.raises(script.SteerError, match="unknown recipe pcaa; use some of top_k-20, mean"):
        script.pick_recipes("mean,pcaa", 20)


def test_compare_recipes_end_to_end(tmp_path, tiny_chat_llama_dir, one_torch_thread, capsys):
    from tests.helpers.classifier import build_goemotions_classifier

    script = load_script("compare_recipes")
    out = tmp_path / "cmp"
    neutral = tmp_path / "neutral.txt"  # the calibrations' and side effects' texts (the fixture has few neutral ones)
    neutral.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    argv = ["--model", tiny_chat_llama_dir, "--emotions", "anger", "--recipes", "mean,pca-pool-mean", "--budgets",
            "0.005", "--limit", "3", "--max-per-class", "4", "--data", str(FIXTURE), "--out", str(out),
            "--classifier", build_goemotions_classifier(tmp_path / "clf"), "--", "--batch-size", "4",
            "--side-effect-texts", "8", "--fluency-texts", str(neutral)]  # fmt: skip
    assert script.main(argv) == 2  # pca-pool-mean is not one of the compared recipes: before any recording
    assert "unknown recipe pca-pool-mean" in capsys.readouterr().err and not out.exists()
    argv[argv.index("mean,pca-pool-mean")] = "mean,pca"
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("comparison.md", "comparison.csv", "recipes.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "recipes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "comparison.md").read_text() in printed + "\n"

    pca = SteeringVector.load(out / "vectors" / "anger-pca.safetensors")
    assert (pca.metadata["method"], pca.metadata["pool"], pca.metadata["text_source"]) == ("pca", "last", "goemotions")
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["recipe"] for r in rows] == ["mean", "pca", "(asking for anger)"]
    study = load_study(out / "sweep")
    task = "steer_emotion_anger"
    for r in rows:
        results = json.loads((out / r["results"]).read_text())
        metrics = results["results"][task]
        assert float(r["gen_ppl"]) == pytest.approx(metrics["gen_ppl,none"], rel=1e-12)
        assert float(r["kl_side_effects"]) == pytest.approx(results["results"]["side_effects"]["kl,none"], rel=1e-12)
        row = next(
            x for x in [*(a.row for a in study.arms), *study.prompted.values()] if f"sweep/{x.source}" == r["results"]
        )
        assert float(r["degenerate_rate"]) == row.metrics[f"{task}/degenerate_rate"]
        assert float(r["target"]) == row.metrics[r["target_metric"]]  # the fluent outputs' where any are
        paired = row.paired.get(r["target_metric"])
        if paired is not None:  # none where no prompt is fluent in both arms
            assert (float(r["delta"]), float(r["ci_low"]), float(r["ci_high"]), int(r["n"])) == (
                paired.delta, paired.ci_low, paired.ci_high, paired.n
            )  # fmt: skip
        if r["recipe"] == "(asking for anger)":
            continue
        sweep = results["config"]["sweep"]
        assert (float(r["kl_budget"]), float(r["alpha"])) == (0.005, sweep["alpha"])
        (calibration,) = json.loads(Path(sweep["vector"]).with_suffix(".calibration.json").read_text())["calibrations"]
        (cal,) = calibration["rows"]
        assert (float(r["kl_calibration"]), float(r["kl_heldout"])) == (cal["kl_calibration"], cal["kl_heldout"])
        control = json.loads((out / r["control_results"]).read_text())["config"]  # one random control per recipe
        vector = control["steering"]["vectors"][0]["metadata"]
        assert (vector["method"], vector["control_of"]["method"]) == ("random", r["recipe"])
        assert control["sweep"]["alpha"] == sweep["alpha"]  # at the vector's alpha

    # a later calibration of `mean` (another alpha for the budget): its earlier results stay in the sweep folder but
    # are not this comparison's configuration, so the table leaves them out instead of listing both
    cal_file = out / "vectors" / "anger-mean.calibration.json"
    stored = json.loads(cal_file.read_text())
    stored["calibrations"][0]["rows"][0]["alpha"] *= 1.01
    cal_file.write_text(json.dumps(stored))
    paths = {("anger", n): out / "vectors" / f"anger-{n}.safetensors" for n in ("mean", "pca")}
    script.write_comparison(out, paths)
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["recipe"] for r in rows] == ["pca", "(asking for anger)"]
