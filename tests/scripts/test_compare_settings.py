"""scripts/compare_settings.py: its comparison table is the study's paired statistics, one row per setting."""

from __future__ import annotations

import numpy as np

from steer_plugin.study.arms import load_study
from steer_plugin.study.sentences import describe
from tests.helpers.study import vector_entry, write_config
from tests.helpers.tiny import load_script


def test_comparison_rows_are_settings_by_budget(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "run"
    write_config(folder, "baseline", None, 0.0, None, rng)
    top_k = {"path": "anger-top_k.safetensors", "metadata": {"emotion": "anger", "method": "top_k", "top_k": 4}}
    for name, vector, alpha, budget in (
        ("mean_a", vector_entry("anger"), 0.5, 0.1),
        ("mean_b", vector_entry("anger"), 0.9, 1.0),
        ("top_k_a", top_k, 0.7, 0.1),
    ):
        write_config(folder, name, vector, alpha, budget, rng)
    text = load_script("compare_settings").comparison(folder, "anger")
    lines = text.splitlines()
    assert lines[0].startswith("anger: baseline target probability ")
    rows = [line for line in lines if line.startswith("| anger")]
    assert len(rows) == 3  # mean at two budgets, top_k at one
    study = load_study(folder)
    arm = next(a for a in study.arms if a.alpha == 0.7)
    assert f"| {arm.series} | 0.1 | 0.7 |" in text
    assert describe(arm.row.paired["steer_emotion_anger/target_prob"]) in rows[-1]
