"""Results folders written by hand, in the layout ``run_sweep`` and lm_eval write: a configuration's
results.json and per-document samples files (a synthetic run), and a plain harness results document."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS = ("anger", "joy", "sadness")
N_DOCS = 12


def vector_entry(emotion: str, control: bool = False) -> dict:
    meta = {"emotion": emotion, "method": "mean", "top_k": None}
    if control:
        meta = {"emotion": emotion, "method": "random", "seed": 0, "control_of": {**meta, "file": f"{emotion}.st"}}
    return {"path": f"{emotion}{'-random-0' if control else ''}.safetensors", "metadata": meta}


def write_config(folder: Path, name: str, vector: dict | None, alpha: float, budget: float | None, rng) -> dict:
    """results.json + samples files of one configuration; returns {task: {metric: per-doc values}}."""
    d = folder / name
    d.mkdir(parents=True)
    scores: dict[str, dict[str, np.ndarray]] = {}
    results: dict[str, dict] = {}
    for task_emotion in ("anger", "joy"):
        task = f"steer_emotion_{task_emotion}"
        metrics = {f"prob_{lab}": rng.random(N_DOCS) for lab in LABELS}
        metrics["target_prob"] = metrics[f"prob_{task_emotion}"]
        scores[task] = metrics
        with open(d / f"samples_{task}.jsonl", "w") as f:
            for i in range(N_DOCS):
                row = {"doc_id": i, "doc_hash": f"h{i}", "prompt_hash": f"p{i}", "filter": "none"}
                row.update({m: float(v[i]) for m, v in metrics.items()}, metrics=list(metrics))
                f.write(json.dumps(row) + "\n")
        results[task] = {"alias": task, **{f"{m},none": float(v.mean()) for m, v in metrics.items()}}
    mc2 = rng.random(N_DOCS)
    scores["truthfulqa_mc2"] = {"acc": mc2}
    with open(d / "samples_truthfulqa_mc2.jsonl", "w") as f:
        for i in range(N_DOCS):
            f.write(json.dumps({"doc_id": i, "doc_hash": f"t{i}", "filter": "none", "acc": mc2[i], "metrics": ["acc"]}))
            f.write("\n")
    results["truthfulqa_mc2"] = {"alias": "truthfulqa_mc2", "acc,none": float(mc2.mean())}
    side = {"kl,none": 0.0 if vector is None else 0.1 + alpha / 10, "ppl,none": 10.0 + alpha}
    if budget is not None:
        side["kl_budget,none"] = budget
    results["side_effects"] = side
    steering = {"vectors": [] if vector is None else [vector], "alphas": [alpha], "layers": "all", "positions": "all"}
    config = {"model": "steered_hf", "model_args": "pretrained=tiny", "limit": N_DOCS, "steering": steering}
    (d / "results.json").write_text(json.dumps({"results": results, "config": config}))
    return scores


def plain_results(model: str = "tiny") -> dict:
    return {"results": {"t": {"acc,none": 0.5}}, "config": {"model": "hf", "model_args": f"pretrained={model}"}}
