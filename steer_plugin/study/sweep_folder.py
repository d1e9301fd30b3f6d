"""The sweep folder: its plan (``sweep.json``) and which configurations are really done.

A sweep resumes by skipping finished configurations, and a wrong skip is a silently wrong table. So a
configuration counts as done only if its ``results.json`` parses, has the harness shape and records
the same sweep settings (model, a fingerprint of its weights files and its load options, tasks, limit,
few-shot/chat/generation settings, classifier, seed, package version) and the same configuration (vector path
and sha256, alpha, layers, positions), and its samples files (the per-document scores the Δ columns come from)
are there as they were written. ``sweep.json``, written before the first evaluation, holds the settings and every
configuration planned into the folder. Into a folder of another sweep nothing runs: a one-line error
says what differs (``--out`` elsewhere, or ``--fresh`` to discard its results); weights changed under the same
``--model`` path are another sweep too. A corrupt or stale results file of the same sweep is rerun, and said so.

Besides the weights, the sweep's identity holds the contents of every other input (``study.inputs``: the model's
config and tokenizer files, the neutral texts, the TruthfulQA and GoEmotions data, the classifier, the task
files under ``--include-path``): an input edited in place, or a path or variable pointed at other files, makes
another sweep, never a silent resume.

Folders of earlier versions resume: a sweep.json or results file without a fingerprint is taken to be of these
inputs (the fingerprints are recorded in sweep.json now, and checked from then on), and a results file that
does not record its samples files counts as done if every task's samples file is there, whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steer_plugin._version import __version__
from steer_plugin.errors import SteerError
from steer_plugin.harness.classifier import chosen_classifier
from steer_plugin.harness.tasks import EMOTION_TASK_PREFIX, is_emotion_task
from steer_plugin.io.reading import JSON_LIMIT, read_regular_text
from steer_plugin.io.terminal import printable
from steer_plugin.model.fingerprint import weights_fingerprint
from steer_plugin.model.gguf import with_gguf_file
from steer_plugin.study.inputs import INPUTS, changed_inputs, input_fingerprints
from steer_plugin.study.results_files import (
    RESULTS_FILE,
    SAMPLES_RECORD,
    SWEEP_FILE,
    SWEEP_FORMAT,
    SWEEP_VERSION,
    results_shape_problem,
    samples_problem,
    table_outputs,
)

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.steering.config import SteeringConfig
    from steer_plugin.study.plan import SweepOptions, SweepPlan

# results don't depend on these (batching is exact); everything else in model_args does
_NOT_SETTINGS = ("batch_size",)
WEIGHTS = "weights"  # the settings' fingerprint of the model's weights files (model.fingerprint.weights_fingerprint)
_FINGERPRINTS = (WEIGHTS, *INPUTS)  # compared where both settings know them


def sweep_settings(options: SweepOptions) -> dict[str, Any]:
    """What every configuration of one sweep shares; a results file with other settings is not ours."""
    settings: dict[str, Any] = {}
    for k, v in options.model_args.items():
        if k not in _NOT_SETTINGS and v is not None:
            settings["model" if k == "pretrained" else k] = v
    model = with_gguf_file(str(options.model_args.get("pretrained", "")), options.model_args.get("gguf_file"))
    settings.update(
        # the weights under the --model path (None until a hub model is downloaded: open_sweep_folder runs after)
        weights=weights_fingerprint(model, options.model_args.get("revision")),
        tasks=list(options.tasks),
        limit=options.limit,
        num_fewshot=options.num_fewshot,
        apply_chat_template=options.apply_chat_template,
        gen_kwargs=options.gen_kwargs,
        classifier=chosen_classifier(options.classifier),
        include_path=options.include_path,
        bootstrap_iters=options.bootstrap_iters,
        seed=options.seed,
        # the kl / ppl columns depend on the neutral texts they were measured on
        side_effects=None
        if options.side_effects is None
        else {"texts": options.side_effects.describe(), "n_texts": options.side_effect_texts},
        package_version=__version__,
        # the contents of every other input: config, tokenizer, data files, classifier, task definitions
        **input_fingerprints(options),
    )
    if options.engine != "hf":  # only where it is not transformers: earlier sweep folders resume as they are
        settings["engine"] = options.engine
    if any(is_emotion_task(t) or t == EMOTION_TASK_PREFIX.rstrip("_") for t in options.tasks):
        settings["prompt_split"] = options.prompt_split  # results on the dev prompts are not the test's
    return json.loads(json.dumps(settings, default=str))  # as it reads back from JSON


def config_record(config: SteeringConfig, vector_sha256: str | None) -> dict[str, Any]:
    """One configuration as recorded in sweep.json and in its results' ``config.sweep``."""
    return {**config.record(), "slug": config.slug(), "vector_sha256": vector_sha256}


@dataclass
class SweepFolder:
    root: Path
    settings: dict[str, Any]
    records: dict[str, dict[str, Any]]  # slug -> config_record, for the configurations of this plan
    todo: list[SteeringConfig]
    notes: list[str] = field(default_factory=list)  # what was discarded or is rerun, and why

    def results_path(self, config: SteeringConfig) -> Path:
        return self.root / config.slug() / RESULTS_FILE


def _comparable(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two settings as they are compared: each content fingerprint (weights, ``inputs.INPUTS``) only where
    both know one (a sweep.json or results file of an earlier version has none; a hub model or data set not
    yet downloaded has none yet)."""
    unknown = {k for k in _FINGERPRINTS if old.get(k) is None or new.get(k) is None}
    return ({k: v for k, v in old.items() if k not in unknown}, {k: v for k, v in new.items() if k not in unknown})


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return printable(text if len(text) <= 60 else text[:57] + "...")


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = list(new) + [k for k in old if k not in new]
    return "; ".join(
        f"{printable(k)} {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys if old.get(k) != new.get(k)
    )


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(read_regular_text(path, JSON_LIMIT)), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        return None, type(e).__name__


def _result_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / RESULTS_FILE).is_file())


def discard_results(root: Path) -> int:
    """``--fresh``: remove what a sweep wrote here (results, samples, sweep.json, leaderboard) and nothing else."""
    folders = _result_folders(root)
    for d in folders:
        for f in [d / RESULTS_FILE, *d.glob("samples_*.jsonl")]:
            f.unlink(missing_ok=True)
        if not any(d.iterdir()):
            d.rmdir()
    for f in [root / SWEEP_FILE, *table_outputs(root / "leaderboard")]:
        f.unlink(missing_ok=True)
    return len(folders)


def _how_to_proceed(root: Path) -> str:
    return f"use --out elsewhere, or --fresh to discard the results in {printable(root)}"


def check_same_sweep(root: Path, settings: dict[str, Any], notes: list[str] | None = None) -> dict[str, Any] | None:
    """Refuse a folder that holds another sweep; returns its sweep.json (None when there is none yet, or when
    it is the plan of another sweep that finished no configuration: nothing is lost in replacing it, and a
    sweep that failed before its first result must not block the corrected rerun; ``notes`` says so)."""
    plan_file = root / SWEEP_FILE
    if not plan_file.exists():
        if _result_folders(root):
            raise SteerError(
                f"{printable(root)} holds sweep results but no {SWEEP_FILE} (an older version, or not a "
                f"steer sweep), so they cannot be checked; {_how_to_proceed(root)}"
            )
        return None
    doc, error = _read_json(plan_file)
    if (
        error
        or not isinstance(doc, dict)
        or doc.get("format") != SWEEP_FORMAT
        or not isinstance(doc.get("settings"), dict)
    ):
        why = error or "not a steer sweep plan"
        raise SteerError(f"{printable(plan_file)} is unreadable ({why}); {_how_to_proceed(root)}")
    old, new = _comparable(doc["settings"], settings)
    if old != new and not _result_folders(root):
        if notes is not None:
            notes.append(
                f"{printable(root)}: the earlier sweep there finished no configuration; its settings are replaced "
                f"({_differences(old, new)})"
            )
        return None
    if old != new:
        what = _differences(old, new)
        if old.get(WEIGHTS) != new.get(WEIGHTS):
            what += " (the model's weights files changed)"
        what += "".join(f" ({why})" for why in changed_inputs(old, new))
        raise SteerError(f"{printable(root)} holds another sweep ({what}); {_how_to_proceed(root)}")
    return doc


def _rerun_reason(path: Path, record: dict[str, Any], settings: dict[str, Any], samples: bool) -> str | None:
    """None if ``path`` holds this configuration's finished results (with its samples files, if the sweep writes
    them: ``samples``); else why it runs again."""
    doc, error = _read_json(path)
    if error:
        return f"corrupt {RESULTS_FILE} ({error})"
    problem = results_shape_problem(doc)
    if problem:
        return f"corrupt {RESULTS_FILE} ({problem})"
    config = doc["config"]
    if not isinstance(config.get("sweep_settings"), dict):
        return f"stale {RESULTS_FILE} (no record of its sweep settings)"
    old, new = _comparable(config["sweep_settings"], settings)
    if old != new:
        return f"stale {RESULTS_FILE} ({_differences(old, new)})"
    had = config.get("sweep") if isinstance(config.get("sweep"), dict) else {}
    if had.get("vector_sha256") != record["vector_sha256"]:
        return f"stale {RESULTS_FILE} (the vector file changed since)"
    if any(had.get(k) != record[k] for k in ("vector", "alpha", "layers", "positions")):
        return f"stale {RESULTS_FILE} (another configuration)"
    problem = samples_problem(path, config) if SAMPLES_RECORD in config else _unrecorded_samples_problem(path, doc)
    if samples and problem:
        return f"incomplete results ({problem})"
    return None


def _unrecorded_samples_problem(path: Path, doc: dict[str, Any]) -> str | None:
    """A results file of an earlier version (no ``SAMPLES_RECORD``): every task's samples file must be there,
    each line readable, with at least one row per document."""
    counts = doc.get("n-samples")
    for task, n in (counts if isinstance(counts, dict) else {}).items():
        name = f"samples_{task}.jsonl"
        try:
            lines = [line for line in read_regular_text(path.parent / name).splitlines() if line.strip()]
            rows = [json.loads(line) for line in lines]
        except FileNotFoundError:
            return f"{printable(name)} is missing"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            return f"{printable(name)} is unreadable ({type(e).__name__})"
        effective = n.get("effective") if isinstance(n, dict) else None
        if isinstance(effective, int) and len(rows) < effective:
            return f"{printable(name)} has {len(rows)} of its {effective} documents"
    return None


def _vector_shas(plan: SweepPlan) -> dict[str, str]:
    """sha256 of every vector file, each loaded once: a bad vector fails here, before the model loads."""
    from steer_plugin.vectors.vector import SteeringVector, file_sha256

    shas = {}
    for c in plan.configs:
        if c.vector is not None and c.vector not in shas:
            SteeringVector.load(c.vector)  # format, shape, float dtype, finite values
            shas[c.vector] = file_sha256(c.vector)
    return shas


def open_sweep_folder(plan: SweepPlan, options: SweepOptions) -> SweepFolder:
    """Check the output folder against this sweep, record the plan in sweep.json, list what must run."""
    from steer_plugin.io.atomic import write_text_atomic
    from steer_plugin.io.outputs import check_output_dir

    root = check_output_dir(options.out_dir)
    settings = sweep_settings(options)
    shas = _vector_shas(plan)
    notes = []
    if options.fresh and root.exists():
        n = discard_results(root)
        if n:
            notes.append(f"--fresh: discarded {n} earlier result(s) in {printable(root)}")
    existing = check_same_sweep(root, settings, notes)
    records = {
        c.slug(): config_record(c, shas[c.vector] if c.steers and c.vector is not None else None) for c in plan.configs
    }
    folder = SweepFolder(root, settings, records, [], notes)
    for c in plan.configs:
        path = folder.results_path(c)
        if not path.exists():
            folder.todo.append(c)
            continue
        reason = _rerun_reason(path, records[c.slug()], settings, options.log_samples or options.per_doc)
        if reason:
            folder.todo.append(c)
            notes.append(f"rerunning {printable(c.slug())}: {reason}")
    planned = [r for r in (existing or {}).get("configs", []) if isinstance(r, dict) and r.get("slug") not in records]
    doc = {
        "format": SWEEP_FORMAT,
        "format_version": SWEEP_VERSION,
        "settings": settings,
        "configs": planned + list(records.values()),
    }
    if existing != doc:  # written once; again only when the plan grows or a vector changed
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / SWEEP_FILE, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return folder
