"""The main job as one call: ``run`` builds the vectors that are missing, sweeps their alphas (calibrated to
KL budgets) over harness tasks and writes the leaderboard and a summary in sentences; ``sweep`` is its middle
part, for vector files at hand. `steer run` and `steer sweep` are thin callers of these two: they build the same
objects (``ModelOptions``, ``Recipe``, ``RecordOptions``, ``Evaluation``) and pass them on.

Only light modules load at import time, because the command line imports this one for its defaults
(`steer --help` stays instant): torch, lm_eval and the statistics load inside the functions.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from steer_plugin.data.goemotions import canonical_split, canonical_target, target_slug
from steer_plugin.data.selection import check_sampling
from steer_plugin.errors import SteerError
from steer_plugin.harness.tasks import EMOTION_TASK_PREFIX, TRUTHFULQA_DIR_ENV
from steer_plugin.io.outputs import check_output_file
from steer_plugin.io.schema import check_arguments, check_fields
from steer_plugin.model.loading import DEFAULT_MODEL, ModelOptions, model_slug
from steer_plugin.steering.alphas import as_alpha_specs
from steer_plugin.study.evaluation import Evaluation, PathLike, emotion_task_family
from steer_plugin.study.plan import Resolver, SweepPlan
from steer_plugin.study.sweep import check_reproducible, run_sweep
from steer_plugin.study.sweep_folder import check_same_sweep, open_sweep_folder, sweep_settings
from steer_plugin.study.task_sets import task_manager
from steer_plugin.study.tuning_file import AUTO, TUNED
from steer_plugin.vectors.recipe import DEFAULT_RECIPE, Recipe

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.harness.engine import SteeringEngine
    from steer_plugin.steering.alphas import KLBudget
    from steer_plugin.study.rows import Row
    from steer_plugin.vectors.request import RecordRequest

# "0,kl:0.1", or a list of numbers, "kl:X" strings and KLBudgets
Alphas = str | Sequence["float | str | KLBudget"]

# steer run's grid: the baseline plus alphas calibrated to these KL budgets (nats per token on neutral
# texts), so the grid means the same on every model; plain numbers still work ("0,0.2,0.5").
DEFAULT_ALPHAS = "0,kl:0.03,kl:0.1,kl:0.3,kl:1"


@dataclass(frozen=True)
class RunResult:
    """What a run (or sweep) left in its folder."""

    folder: Path  # the run folder: one subfolder of results per configuration, sweep.json, the reports
    rows: list[Row]  # the leaderboard rows, with their paired Δ vs the unsteered baseline
    table: str  # the leaderboard as printed
    summary: str | None  # the summary sentences (summary.md); None without a baseline to compare with
    files: list[Path]  # the reports written: leaderboard.md/.csv and plots, summary.md, leakage.csv/.png, ...
    vectors: list[Path]  # the vectors swept (built first if they were missing)
    results: list[Path]  # each configuration's results.json


@dataclass(frozen=True)
class RecordOptions:
    """Which texts a run records when it builds a missing vector.

    Attributes:
        baseline: the class the vector points away from.
        data: a local GoEmotions folder (train.tsv, ...); None: the hub dataset. Also the neutral texts of the
            side effects unless the evaluation names its own (``Evaluation.fluency_texts``).
        split: the split the vector is built from.
        max_per_class: a seeded sample of at most this many texts per class.
    """

    baseline: str = "neutral"
    data: PathLike | None = None
    split: str = "train"
    max_per_class: int | None = None

    def __post_init__(self) -> None:
        # where it is built, as RecordRequest checks them: `max_per_class=0` is refused now, not after the data
        # (or, for a vector that is there, never) loads
        check_fields(self)
        check_sampling(self.max_per_class)
        canonical_split(self.split)
        canonical_target(self.baseline)


def sweep(
    vectors: Sequence[PathLike],
    alphas: Alphas,
    out: PathLike,
    *,
    model: ModelOptions,
    evaluation: Evaluation,
    progress: bool = True,
) -> RunResult:
    """Evaluate vector files at every alpha x layer set x positions (with their random controls) with one
    model load, resuming a folder of the same sweep, and write the leaderboard.

    Args:
        vectors: the vector files.
        alphas: alphas and KL budgets, e.g. ``"0,0.5,kl:0.1"`` or ``[0, 0.5, "kl:0.1"]``; a budget is the
            alpha whose KL to the unsteered model on neutral texts is that many nats per token, calibrated
            on the model first (and stored next to the vector).
        out: the sweep folder.
        model: the model and how to load it.
        evaluation: tasks, layers, positions, controls, side effects, batching.
        progress: print progress and calibrations to stderr.

    Returns:
        The folder, its leaderboard rows and table, the files written, the results files (no summary:
        see ``run``).
    """
    from steer_plugin.harness.engine import load_engine
    from steer_plugin.study.table import write_leaderboard
    from steer_plugin.vectors.controls import write_controls

    check_arguments(
        "sweep",
        {"vectors": (vectors, Sequence[PathLike]), "out": (out, PathLike), "model": (model, ModelOptions),
         "evaluation": (evaluation, Evaluation), "progress": (progress, bool)},
    )  # fmt: skip
    if not evaluation.task_names:
        raise SteerError("give --tasks, e.g. --tasks truthfulqa_mc1,truthfulqa_mc2,steer_emotion_anger")
    grid = as_alpha_specs(alphas)
    folder = Path(out)
    evaluation.check(folder, model)
    paths = [str(v) for v in vectors]
    check_reproducible(model.harness_args(), paths)  # a ',' in a path: refused now, not in a reproduce command
    layer_sets = vector_layer_sets(paths, model, evaluation)  # loads each vector: a missing or corrupt one fails now
    evaluation.check_texts(grid)
    options = evaluation.sweep_options(model, folder)
    if not evaluation.fresh:  # before the controls are written into the folder
        check_same_sweep(folder, sweep_settings(options))
    tasks = task_manager(options)  # an unknown task fails before the model loads
    controls = write_controls(paths, evaluation.controls, folder / "controls") if evaluation.controls else None
    engine = load_engine(options.model_args, options.engine)
    source = options.side_effects or evaluation.text_source()
    groups: dict[tuple[str, ...], list[str]] = {}  # vectors that steer the same layer sets share one grid
    for v in paths:
        groups.setdefault(tuple(layer_sets[v]), []).append(v)
    plans = [
        SweepPlan.grid(
            group, grid, list(specs), evaluation.position_sets, controls=controls,
            resolve=_calibrated_alphas(model.name, engine, source, progress),  # kl:X alphas need the model
            control_match=evaluation.control_match, prompted=evaluation.prompted if last else (),
        )
        for last, (specs, group) in ((i == len(groups) - 1, item) for i, item in enumerate(groups.items()))
    ]  # fmt: skip
    plan = SweepPlan(list(dict.fromkeys(c for p in plans for c in p.configs)))  # the baseline once, first
    results = run_sweep(engine, plan, options, progress, folder=open_sweep_folder(plan, options), tasks=tasks)
    board = write_leaderboard(folder)
    return RunResult(folder, board.rows, board.text, None, board.files, [Path(v) for v in paths], results)


def vector_layer_sets(paths: list[str], model: ModelOptions, evaluation: Evaluation) -> dict[str, list[str]]:
    """Each vector's layer specs: the evaluation's, with ``tuned`` as the layers `steer tune` chose for the vector
    (``study.tuning_file``: a one-line error naming `steer tune` where there is no valid choice)."""
    from steer_plugin.study.tuning_file import tune_command, tuned_choice, use_key
    from steer_plugin.vectors.vector import SteeringVector

    specs = evaluation.layer_sets
    _no_auto(evaluation)
    out = {}
    for v in paths:
        vector = SteeringVector.load(v)
        if TUNED not in specs:
            out[v] = list(specs)
            continue
        if len(evaluation.position_sets) != 1:
            raise SteerError(f"--layers {TUNED} is a choice at one --positions setting; give one")
        emotion = str(vector.metadata.get("emotion") or "EMOTION")
        key = use_key(model, v, evaluation.position_sets[0], evaluation.classifier)
        chosen = tuned_choice(v, key, tune_command(model, emotion)).layers
        out[v] = list(dict.fromkeys(chosen if s == TUNED else s for s in specs))
    return out


def _no_auto(evaluation: Evaluation) -> None:
    """``auto`` tunes before the run starts, which `steer run` does (``study.tune.tune_missing``); here it is an
    error, before any work."""
    if AUTO in evaluation.layer_sets:
        raise SteerError(
            f"layers {AUTO!r} tunes first: `steer run --layers {AUTO}`, or steer_plugin.tune(...) and then "
            f"layers={TUNED!r}"
        )


def run(
    emotion: str,
    model: str | ModelOptions = DEFAULT_MODEL,
    *,
    recipe: Recipe | Sequence[Recipe] = DEFAULT_RECIPE,
    record: RecordOptions = RecordOptions(),
    evaluation: Evaluation = Evaluation(),  # noqa: B008 (frozen: one shared default is safe)
    alphas: Alphas = DEFAULT_ALPHAS,
    vector: PathLike | None = None,
    out: PathLike | None = None,
    leakage_budget: float | None = None,
    prompt_control: bool = True,
    progress: bool = True,
) -> RunResult:
    """`steer run`: build the vector if it is missing, calibrate the alphas to KL budgets, sweep them (with a
    norm-matched random control each) over TruthfulQA and the emotion's task, and write the leaderboard and a
    summary in sentences. Finished configurations of an earlier run into the same folder are reused.

    The defaults were chosen by measurement at equal KL (docs/findings.md, "Choosing the defaults"): the class mean
    against the mean of the 27 emotions' means with 3 principal components of neutral states projected out
    (``DEFAULT_RECIPE``, ``mean-emotions-npc3``: fewer broken outputs than top-k at equal KL, and ahead of it on
    anger on both model families measured), on the middle third of the layers at the response positions
    (``Evaluation``'s defaults).

    Args:
        emotion: a GoEmotions label or Ekman group (``anger``, ``ekman:anger``), several (``anger,joy``),
            ``all`` (the 27 emotions) or ``ekman`` (the 6 groups): one recording, one sweep.
        model: hub id, local folder or GGUF file, or ``ModelOptions`` (dtype, device, revision, ...).
        recipe: how missing vectors are built; several recipes build one vector each (from one recording) and
            sweep them all.
        record: which texts the recording reads.
        evaluation: tasks, layers, positions, controls, side effects, batching; its ``tasks`` default to
            TruthfulQA MC1/MC2 and ``steer_emotion_<emotion>``, its neutral texts to ``record.data``.
        alphas: alphas and KL budgets, e.g. ``"0,kl:0.1"`` or ``[0, 0.5, "kl:0.1"]``.
        vector: use this vector file instead of ``vectors/<model>/<emotion>-<recipe>.safetensors`` (built
            there if missing).
        out: the run folder (default ``runs/<model>-<emotion>``).
        leakage_budget: the KL budget (or alpha) of leakage.csv/.png (default: the middle one).
        prompt_control: also evaluate *asking* for each emotion (the prompting reference, a positive control):
            the emotion tasks' prompts with ``data.prompts.emotion_instruction`` as the system message (or a
            prefix without a chat template), unsteered, with its own side effects.
        progress: print progress, calibrations and what was built to stderr.

    Returns:
        The run folder, its leaderboard rows and table, the summary sentences, the files written, the
        vectors swept and each configuration's results file.
    """
    from steer_plugin.study.report import write_study
    from steer_plugin.study.targets import check_level, parse_targets, run_folder_name
    from steer_plugin.vectors.vector import default_vector_path

    check_arguments(
        "run",
        {"emotion": (emotion, str), "model": (model, str | ModelOptions), "recipe": (recipe, Recipe | Sequence[Recipe]),
         "record": (record, RecordOptions), "evaluation": (evaluation, Evaluation), "vector": (vector, PathLike | None),
         "out": (out, PathLike | None), "leakage_budget": (leakage_budget, float | None),
         "prompt_control": (prompt_control, bool), "progress": (progress, bool)},
    )  # fmt: skip
    loading = model if isinstance(model, ModelOptions) else ModelOptions(name=model)
    emotions = parse_targets(emotion)
    grid = as_alpha_specs(alphas)
    check_level(leakage_budget, grid)  # before minutes of recording and evaluation
    _no_auto(evaluation)
    recipes = [recipe] if isinstance(recipe, Recipe) else list(recipe)
    if not recipes:
        raise SteerError("give at least one recipe (method: mean, top_k, pca or probe)")
    for r in recipes:
        r.check()
    if vector is not None and len(emotions) > 1:
        raise SteerError("--vector names one vector; give one --emotion with it (or leave --vector out)")
    if vector is not None and len(recipes) > 1:
        raise SteerError("--vector names one vector; give one method with it (or leave --vector out)")
    wanted = {
        (e, r): Path(vector) if vector is not None else default_vector_path(loading.name, e, r)
        for e in emotions
        for r in recipes
    }
    evaluation = _run_evaluation(evaluation, emotions, loading, record, prompt_control)
    default_out = Path("runs") / f"{model_slug(loading.name)}-{run_folder_name(emotion, emotions)}"
    folder = Path(out) if out is not None else default_out
    missing = {key: path for key, path in wanted.items() if not path.exists()}
    check_reproducible(loading.harness_args(), [str(p) for p in wanted.values()])  # before building
    if missing:
        # before building (minutes): the vectors' paths, the run folder and that it holds this sweep
        for path in missing.values():
            check_output_file(path, "--vector" if vector is not None else "vector path")
        evaluation.check(folder, loading)
        evaluation.check_texts(grid)
        dimensions = loading.dimensions()  # before recording: K against the hidden size in the config
        for _, r in missing:
            r.check(dimensions[1] if dimensions else None)
        if not evaluation.fresh:
            check_same_sweep(folder, sweep_settings(evaluation.sweep_options(loading, folder)))
        _build_missing(missing, _record_request(loading, emotions, record, evaluation, progress), progress)
    result = sweep(list(wanted.values()), grid, folder, model=loading, evaluation=evaluation, progress=progress)
    try:
        summary, files = write_study(folder, leakage_budget=leakage_budget)
    except SteerError as e:  # e.g. alphas without 0: the table stands, there is nothing to compare against
        _say(progress, f"no summary: {e}")
        return result
    return replace(result, summary=summary, files=[*result.files, *files])


def _run_evaluation(
    evaluation: Evaluation, emotions: list[str], model: ModelOptions, record: RecordOptions, prompt_control: bool
) -> Evaluation:
    """``evaluation`` with what a run fills in: the default tasks (TruthfulQA, offline where a local folder is
    given, and the emotions' tasks), the prompting reference, the neutral texts of the recording's data."""
    tq_dir = evaluation.truthfulqa_dir or os.environ.get(TRUTHFULQA_DIR_ENV)
    tasks = evaluation.task_names
    if not tasks:
        tq = ["truthfulqa_local_mc1", "truthfulqa_local_mc2"] if tq_dir else ["truthfulqa_mc1", "truthfulqa_mc2"]
        tasks = [*tq, *(f"{emotion_task_family(evaluation.chat, model)}_{target_slug(e)}" for e in emotions)]
    asks = prompt_control and any(t.startswith(EMOTION_TASK_PREFIX) for t in tasks)
    return replace(
        evaluation, tasks=tasks, prompted=emotions if asks else (), truthfulqa_dir=tq_dir,
        fluency_texts=evaluation.fluency_texts or record.data,
    )  # fmt: skip


def _record_request(
    model: ModelOptions, emotions: list[str], record: RecordOptions, evaluation: Evaluation, progress: bool
) -> RecordRequest:
    """What to record for the missing vectors (their targets are set by what is missing)."""
    from steer_plugin.vectors.request import RecordRequest

    request = RecordRequest(
        model=model, emotion=emotions[0], baseline=record.baseline, split=record.split,
        data_dir=str(record.data) if record.data else None, max_per_class=record.max_per_class, progress=progress,
    )  # fmt: skip
    if isinstance(evaluation.batch_size, int):  # an 'auto' batch size is the harness's: recording keeps its default
        request = replace(request, batch_size=evaluation.batch_size)
    return request


def _build_missing(missing: dict[tuple[str, Recipe], Path], request: RecordRequest, progress: bool) -> None:
    """Every missing (emotion, recipe) vector from one recording pass over their texts and the baseline's
    (and every emotion's, where a recipe centres on them)."""
    from steer_plugin.vectors.build import build_vector
    from steer_plugin.vectors.request import recorded, with_all_emotions

    emotions = list(dict.fromkeys(e for e, _ in missing))
    if len(emotions) == 1:
        request = replace(request, emotion=emotions[0])
    else:  # several targets against one baseline, each text recorded once
        request = replace(request, emotion=",".join(emotions), targets=tuple(emotions))
    names = ", ".join(str(p) for p in missing.values())
    _say(progress, f"building {names} (no vector yet)" if len(missing) == 1 else f"building {names} from one recording")
    if any(r.centre == "emotions" for _, r in missing):
        request = with_all_emotions(request)
    with recorded(request, per_text=any(r.per_text for _, r in missing)) as rec:
        for (emotion, recipe), path in missing.items():
            vec = build_vector(
                rec.stats, emotion, request.baseline, **recipe.build_kwargs(), activations=rec.activations,
                seed=request.seed,
            )  # fmt: skip
            vec.save(path)
            _say(progress, f"wrote {path}")


def _calibrated_alphas(model_name: str, engine: SteeringEngine, source: TextSource, progress: bool) -> Resolver:
    """kl:X alphas: calibrate each (vector, layers, positions) on the sweep's model, reusing stored calibrations."""
    from steer_plugin.steering.calibration_file import calibration_path
    from steer_plugin.steering.calibration_table import format_calibration

    def resolve(vector: str, layers: str, positions: str, budgets: list[float]) -> dict[float, float]:
        calibration, reused = engine.calibrate(
            vector, budgets, layers=layers, positions=positions, source=source, model_name=model_name,
            progress=(lambda m: _say(True, f"calibrating {vector} (layers {layers}, {positions}):{m}"))
            if progress
            else None,
        )  # fmt: skip
        how = f"stored in {calibration_path(vector)}" if reused else f"calibrated, wrote {calibration_path(vector)}"
        _say(progress, format_calibration(calibration, f"KL budgets of {vector} ({how}):"))
        rows = {b: next(r for r in calibration.rows if math.isclose(r.kl_budget, b, rel_tol=1e-9)) for b in budgets}
        for b, r in rows.items():
            if not r.converged:  # its row would carry a budget whose KL it never had
                _say(progress, f"kl:{b:g} not reached for {vector} (layers {layers}, {positions}): the closest KL "
                               f"is {r.kl_calibration:.4g} at alpha {r.alpha:.5g}; not evaluated")  # fmt: skip
        return {b: r.alpha for b, r in rows.items() if r.converged}

    return resolve


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
