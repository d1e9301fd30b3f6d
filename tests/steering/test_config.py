"""A sweep configuration's folder name and its sweep.json record never change: an old sweep folder resumes.

The expected values were computed by the code before ``SteeringConfig`` replaced ``SweepConfig``."""

from __future__ import annotations

import hashlib
import json

import pytest

from steer_plugin.errors import SteerError
from steer_plugin.steering.alphas import KLBudget
from steer_plugin.steering.config import SteeringConfig
from steer_plugin.study.plan import SweepConfig, SweepPlan
from steer_plugin.study.sweep_folder import config_record

PINNED = [
    (SweepConfig(None, 0.0), "baseline"),
    (SweepConfig("vectors/anger.safetensors", 0.0), "baseline"),
    (SweepConfig("vectors/anger.safetensors", 2.0), "anger_a2_Lall_all_53ece3d8"),
    (
        SweepConfig("/data/v/anger_mean.safetensors", -1.5, "3,5-9", "response"),
        "anger_mean_a-1.5_L3.5-9_response_e9e71ae4",
    ),
    (
        SweepConfig("controls/anger-random-0.safetensors", 0.1734, "middle", "all", 0.1),
        "anger-random-0_kl0.1_a0.1734_Lmiddle_all_4ab54577",
    ),
    (SweepConfig("joy.safetensors", 0.0421, "all", "response", 0.003), "joy_kl0.003_a0.0421_Lall_response_7d355f3f"),
    (SweepConfig("joy.safetensors", 1e-05, "0-2", "all"), "joy_a1e-05_L0-2_all_18b04a4d"),
]


@pytest.mark.parametrize(("config", "slug"), PINNED)
def test_slugs_are_those_of_earlier_versions(config, slug):
    assert config.slug() == slug


def test_sweep_json_records_are_those_of_earlier_versions():
    records = [json.dumps(config_record(c, "abc")) for c, _ in PINNED[2:5]]
    assert records == [
        '{"vector": "vectors/anger.safetensors", "alpha": 2.0, "layers": "all", "positions": "all", "kl_budget": null, '
        '"slug": "anger_a2_Lall_all_53ece3d8", "vector_sha256": "abc"}',
        '{"vector": "/data/v/anger_mean.safetensors", "alpha": -1.5, "layers": "3,5-9", "positions": "response", '
        '"kl_budget": null, "slug": "anger_mean_a-1.5_L3.5-9_response_e9e71ae4", "vector_sha256": "abc"}',
        '{"vector": "controls/anger-random-0.safetensors", "alpha": 0.1734, "layers": "middle", "positions": "all", '
        '"kl_budget": 0.1, "slug": "anger-random-0_kl0.1_a0.1734_Lmiddle_all_4ab54577", "vector_sha256": "abc"}',
    ]
    assert json.dumps(config_record(SweepConfig(None, 0.0), None)) == (
        '{"vector": null, "alpha": 0.0, "layers": "all", "positions": "all", "kl_budget": null, "slug": "baseline", '
        '"vector_sha256": null}'
    )


def test_a_grid_with_controls_and_budgets_plans_the_folders_of_earlier_versions():
    plan = SweepPlan.grid(
        ["v/a.safetensors", "b.safetensors"],
        [0, 1.0, KLBudget(0.1), -0.5],
        ["all", "3,5"],
        ["response", "all"],
        controls={"v/a.safetensors": ["ctl/a-random-0.safetensors"]},
        resolve=lambda v, layers, positions, budgets: {0.1: 0.3333333 if "random" in v else 0.123456},
        control_match="kl",
    )
    slugs = [c.slug() for c in plan.configs]
    assert slugs[:6] == [
        "baseline",
        "a_a1_Lall_response_44322e6c",
        "a-random-0_a1_Lall_response_7c91e8e3",
        "a_kl0.1_a0.1235_Lall_response_1f221904",
        "a-random-0_kl0.1_a0.3333_Lall_response_f394b5d0",
        "a_a-0.5_Lall_response_98dcbd54",
    ]
    assert len(slugs) == 37 and slugs[-1] == "b_a-0.5_L3.5_all_e1ef169e"
    assert hashlib.sha256("\n".join(slugs).encode()).hexdigest()[:16] == "ec4e9b8ba3e7f4b3"


def test_the_plan_marks_each_control_with_its_vector():
    plan = SweepPlan.grid(["a.safetensors"], [1.0, 2.0], ["all"], ["response"], controls={"a.safetensors": ["c.st"]})
    assert SweepConfig is SteeringConfig
    assert [(c.vector, c.alpha, c.control_of) for c in plan.configs] == [
        (None, 0.0, None),
        ("a.safetensors", 1.0, None),
        ("c.st", 1.0, "a.safetensors"),
        ("a.safetensors", 2.0, None),
        ("c.st", 2.0, "a.safetensors"),
    ]
    assert "control_of" not in config_record(plan.configs[2], None)  # sweep.json as before


def test_unknown_positions_are_a_clear_error():
    with pytest.raises(SteerError, match="unknown positions 'prompt'"):
        SweepPlan.grid(["a.safetensors"], [1.0], ["all"], ["prompt"])
