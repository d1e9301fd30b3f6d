"""`steer tune`: choose where (and how hard) to steer, on the dev prompts that no report uses.

For each emotion's vector (built as `steer run` builds it, where it is missing) one sweep evaluates every candidate
layer range x KL budget on the **dev** part of the emotion task's prompts (``data.prompt_split``), with the
prompting reference beside it; config batching puts the whole grid into shared batches. Every cell gets the
robust Δ (the target probability against the unsteered baseline, on prompts whose outputs are fluent in both arms:
``study.quality``), its degenerate rate and its KL on neutral texts, and one rule chooses (``RULE``):

* a cell is **eligible** when its robust Δ was measured and its degenerate rate is at most the baseline's + 10
  points (``DEGENERATE_MARGIN``);
* the choice is the eligible cell with the **largest robust Δ**; ties go to the smaller KL budget, then to the
  earlier candidate (in the order of ``candidate_layers``). No eligible cell: no choice (said, and stored so).

The candidates (``candidate_layers``): the thirds of the depth (the middle one is ``middle``, `steer run`'s
default), its quarters, and all layers, each range once. The choice and the whole grid are stored beside the vector
(``study.tuning_file``), keyed like its calibrations, and drawn (``study.tune_plot``); ``--layers tuned`` then
steers the chosen layers, on the test prompts.
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steer_plugin.data.goemotions import target_slug
from steer_plugin.data.prompt_split import SPLIT_RULE, TUNING_SPLIT
from steer_plugin.errors import SteerError
from steer_plugin.io.schema import check_arguments
from steer_plugin.model.layers import MIDDLE, format_layers, parse_layers
from steer_plugin.model.loading import DEFAULT_MODEL, ModelOptions, model_slug
from steer_plugin.study.evaluation import Evaluation, PathLike, emotion_task_family
from steer_plugin.study.quality import DEGENERATE, FLUENT_TARGET
from steer_plugin.study.run import Alphas, RecordOptions, vector_layer_sets
from steer_plugin.study.tuning_file import AUTO, TUNED, Cell, Tuning, find_valid, store, tuning_path, use_key
from steer_plugin.vectors.recipe import DEFAULT_RECIPE, Recipe

DEFAULT_BUDGETS = (0.03, 0.1, 0.3, 1.0)  # `steer run`'s KL budgets
DEGENERATE_MARGIN = 0.10  # a choice may add at most 10 points of degenerate outputs to the baseline's
RULE = (
    "the largest robust Δ (target probability on dev prompts fluent in both arms) among the cells whose degenerate "
    "rate is at most the baseline's + 10 points; ties to the smaller KL budget, then to the earlier candidate"
)
_KL = "side_effects/kl"


@dataclass(frozen=True)
class TuneResult:
    """What `steer tune` chose, per vector, and where it wrote it."""

    folder: Path | None  # the sweep folder of the grid (None: every choice was reused)
    tunings: dict[Path, Tuning]  # vector -> its tuning (stored beside it)
    files: list[Path]  # the tuning files and pictures written
    reused: list[Path]  # vectors whose stored tuning still held


def candidate_layers(n_layers: int) -> list[str]:
    """The first, middle (``middle``) and last third of ``n_layers`` blocks, the four quarters, and ``all``; a range
    that names the same layers as an earlier one (or none) is left out."""
    third = n_layers // 3
    ranges = [range(0, third), range(third, n_layers - third), range(n_layers - third, n_layers)]
    ranges += [range(n_layers * i // 4, n_layers * (i + 1) // 4) for i in range(4)]
    specs, seen = [], set()
    for i, r in enumerate([*ranges, range(n_layers)]):
        layers = tuple(r)
        if not layers or layers in seen:
            continue
        seen.add(layers)
        specs.append(MIDDLE if i == 1 else format_layers(list(layers), n_layers))
    return specs


def choose(cells: Sequence[Cell], baseline_degenerate_rate: float, margin: float = DEGENERATE_MARGIN) -> Cell | None:
    """The cell ``RULE`` picks (cells in candidate order); None when no cell is eligible."""
    limit = baseline_degenerate_rate + margin + 1e-9  # rates are fractions of prompts: no rounding noise decides
    eligible = [
        (i, c)
        for i, c in enumerate(cells)
        if c.robust_delta is not None and c.degenerate_rate is not None and c.degenerate_rate <= limit
    ]
    if not eligible:
        return None
    return min(eligible, key=lambda ic: (-round(ic[1].robust_delta or 0.0, 12), ic[1].kl_budget, ic[0]))[1]


def tuning_key(
    model: ModelOptions, vector: PathLike, evaluation: Evaluation, budgets: Sequence[float], task: str
) -> dict[str, Any]:
    """The whole key of a tuning: what it is for, and what its grid measured (``tuning_file``)."""
    from steer_plugin.vectors.recipe import recipe_name
    from steer_plugin.vectors.vector import SteeringVector

    return {
        **use_key(model, vector, evaluation.position_sets[0], evaluation.classifier),
        "recipe": recipe_name(SteeringVector.load(vector).metadata),
        "budgets": [float(b) for b in budgets],
        "layers": list(evaluation.layer_sets),
        "task": task,
        "prompts": TUNING_SPLIT,
        "split_rule": SPLIT_RULE,
        "limit": evaluation.limit,
        "texts": evaluation.text_source().describe(),
    }


def tune(
    emotion: str,
    model: str | ModelOptions = DEFAULT_MODEL,
    *,
    recipe: Recipe = DEFAULT_RECIPE,
    record: RecordOptions = RecordOptions(),  # noqa: B008 (frozen: one shared default is safe)
    evaluation: Evaluation = Evaluation(),  # noqa: B008
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    layers: Sequence[str] | None = None,
    vector: PathLike | None = None,
    out: PathLike | None = None,
    progress: bool = True,
) -> TuneResult:
    """`steer tune`: choose each emotion vector's layers on the dev prompts and store the choice beside the vector.

    Args:
        emotion: as ``steer_plugin.run``'s (``anger``, ``anger,joy,sadness``, ``ekman``).
        model: hub id, local folder or GGUF file, or ``ModelOptions``.
        recipe: how missing vectors are built (one recipe).
        record: which texts the recording of a missing vector reads; ``data`` is also the neutral texts.
        evaluation: classifier, limit, positions (one), batching, ...; its tasks, layers, controls and prompt split
            are the tuning's own (the emotions' tasks on the dev prompts, the candidates, no controls).
        budgets: the KL budgets of the grid.
        layers: the candidate layer specs (default ``candidate_layers`` of the model's depth).
        vector: this vector file instead of ``vectors/<model>/<emotion>-<recipe>.safetensors`` (one emotion).
        out: the sweep folder of the grid (default ``runs/<model>-tune-<emotions>``).
        progress: print progress to stderr.

    Returns:
        The choices (stored tunings, reused where they still held), the files written and the sweep folder.
    """
    from steer_plugin.study.run import run
    from steer_plugin.study.targets import parse_targets
    from steer_plugin.vectors.vector import default_vector_path

    check_arguments(
        "tune",
        {"emotion": (emotion, str), "model": (model, str | ModelOptions), "recipe": (recipe, Recipe),
         "record": (record, RecordOptions), "evaluation": (evaluation, Evaluation),
         "budgets": (budgets, Sequence[float | str]), "layers": (layers, Sequence[str] | None),
         "vector": (vector, PathLike | None), "out": (out, PathLike | None), "progress": (progress, bool)},
    )  # fmt: skip
    loading = model if isinstance(model, ModelOptions) else ModelOptions(name=model)
    emotions = parse_targets(emotion)
    recipe.check()
    if vector is not None and len(emotions) > 1:
        raise SteerError("--vector names one vector; give one --emotion with it (or leave --vector out)")
    grid_budgets = sorted({_budget(b) for b in budgets})
    if not grid_budgets:
        raise SteerError("give at least one KL budget to tune over")
    dimensions = loading.dimensions()
    if dimensions is None:
        raise SteerError(f"steer tune: the config of {loading.name} does not say how many layers it has")
    n_layers = dimensions[0]
    candidates = list(layers) if layers else candidate_layers(n_layers)
    steered = {spec: format_layers(parse_layers(spec, n_layers), n_layers) for spec in candidates}
    family = emotion_task_family(evaluation.chat, loading)
    tasks = {e: f"{family}_{target_slug(e)}" for e in emotions}
    evaluation = replace(
        evaluation, tasks=list(tasks.values()), layers=candidates, controls=0, prompt_split=TUNING_SPLIT,
        fluency_texts=evaluation.fluency_texts or record.data,
    )  # fmt: skip
    if len(evaluation.position_sets) != 1:
        raise SteerError("steer tune chooses layers at one --positions setting; give one")
    paths = {e: Path(vector) if vector is not None else default_vector_path(loading.name, e, recipe) for e in emotions}
    tunings: dict[Path, Tuning] = {}
    for e, path in paths.items():
        if path.exists() and not evaluation.fresh:
            found = find_valid(path, tuning_key(loading, path, evaluation, grid_budgets, tasks[e]))
            if found is not None:
                _say(progress, f"{e}: the stored tuning in {tuning_path(path)} still holds; reused")
                tunings[path] = found
    reused = list(tunings)
    todo = [e for e in emotions if paths[e] not in tunings]
    folder = None
    if todo:
        slug = "-".join(target_slug(e) for e in todo)
        folder = Path(out) if out is not None else Path("runs") / f"{model_slug(loading.name)}-tune-{slug}"
        alphas = "0," + ",".join(f"kl:{b:g}" for b in grid_budgets)
        evaluation.check(folder, loading)  # a refusal (the classifier, the folders) before "tuning" is said
        _say(progress, f"tuning {', '.join(todo)}: layers {', '.join(candidates)} x {alphas[2:]} on the dev prompts")
        result = run(
            ",".join(todo), loading, recipe=recipe, record=record, evaluation=evaluation, alphas=alphas,
            vector=vector, out=folder, progress=progress,
        )  # fmt: skip
        for e in todo:
            key = tuning_key(loading, paths[e], evaluation, grid_budgets, tasks[e])
            tunings[paths[e]] = _tuning(result.rows, e, tasks[e], key, candidates, steered, grid_budgets, folder)
    files = _write(tunings, reused)
    return TuneResult(folder, tunings, files, reused)


def tune_missing(
    emotion: str,
    model: ModelOptions,
    *,
    recipes: Sequence[Recipe],
    record: RecordOptions,
    evaluation: Evaluation,
    alphas: Alphas,
    vector: PathLike | None = None,
    progress: bool = True,
) -> Evaluation:
    """``--layers auto`` of `steer run`: `steer tune` every vector of the run without a valid stored choice (over the
    run's KL budgets, else ``DEFAULT_BUDGETS``); returns ``evaluation`` with ``tuned`` in place of ``auto``."""
    from steer_plugin.steering.alphas import KLBudget, as_alpha_specs
    from steer_plugin.study.targets import parse_targets
    from steer_plugin.vectors.vector import default_vector_path

    tuned = replace(evaluation, layers=[TUNED if s == AUTO else s for s in evaluation.layer_sets])
    budgets = [a.kl for a in as_alpha_specs(alphas) if isinstance(a, KLBudget)] or list(DEFAULT_BUDGETS)
    for recipe in recipes:
        todo = []
        for e in parse_targets(emotion):
            path = Path(vector) if vector is not None else default_vector_path(model.name, e, recipe)
            if not _has_choice(path, model, tuned):
                todo.append(e)
        if todo:
            result = tune(",".join(todo), model, recipe=recipe, record=record, evaluation=tuned, budgets=budgets,
                          vector=vector, progress=progress)  # fmt: skip
            for path, tuning in result.tunings.items():  # `steer tune` prints its choices; here the run says them
                _say(progress, describe_choice(path, tuning))
    return tuned


def _has_choice(path: Path, model: ModelOptions, evaluation: Evaluation) -> bool:
    """Whether ``path`` exists and has a valid stored choice for ``evaluation``'s ``tuned`` layers."""
    if not path.exists():
        return False
    try:
        vector_layer_sets([str(path)], model, evaluation)
    except SteerError:
        return False
    return True


def _budget(value: float | str) -> float:
    text = str(value).strip()
    try:
        b = float(text.removeprefix("kl:"))
    except ValueError:
        raise SteerError(f"KL budget {value!r} is not a number (e.g. 0.1 or kl:0.1)") from None
    if not (b > 0 and math.isfinite(b)):
        raise SteerError(f"a KL budget must be a positive number of nats per token, got {value!r}")
    return b


def _tuning(
    rows: list[Any],
    emotion: str,
    task: str,
    key: dict[str, Any],
    candidates: list[str],
    steered: dict[str, str],
    budgets: list[float],
    folder: Path,
) -> Tuning:
    """The grid of one emotion from the sweep's leaderboard rows, and the choice ``RULE`` makes on it."""
    fluent, degenerate = f"{task}/{FLUENT_TARGET}", f"{task}/{DEGENERATE}"
    baseline = next((r for r in rows if r.key.unsteered and degenerate in r.metrics), None)
    if baseline is None:
        raise SteerError(f"{folder}: no baseline with per-document scores of {task}: nothing to tune against")
    mine = [r for r in rows if r.key.steered and r.key.emotion == emotion and r.key.control_of is None]
    cells = [
        _cell(spec, steered[spec], b, next((r for r in mine if _at(r, steered[spec], b)), None), task)
        for spec in candidates
        for b in budgets
    ]
    asking = next((r for r in rows if r.key.prompted == emotion), None)
    reference = None
    if asking is not None:
        paired = asking.paired.get(fluent)
        reference = {
            "robust_delta": paired.delta if paired else None,
            "ci_low": paired.ci_low if paired else None,
            "ci_high": paired.ci_high if paired else None,
            "degenerate_rate": asking.metrics.get(degenerate),
            "kl": asking.metrics.get(_KL),
        }
    base_rate = float(baseline.metrics[degenerate])
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Tuning(key, RULE, base_rate, cells, choose(cells, base_rate), reference, str(folder), created)


def _at(row: Any, layers: str, budget: float) -> bool:
    """The row steers these layers at this KL budget."""
    return row.key.layers == layers and row.key.kl_budget is not None and math.isclose(row.key.kl_budget, budget)


def _cell(spec: str, steered: str, budget: float, row: Any, task: str) -> Cell:
    """One grid cell from its leaderboard row (None: the budget was not reached on these layers)."""
    if row is None:
        return Cell(spec, steered, budget)
    paired = row.paired.get(f"{task}/{FLUENT_TARGET}")
    return Cell(
        spec, steered, budget, alpha=float(row.key.alpha), kl=row.metrics.get(_KL),
        robust_delta=paired.delta if paired else None, ci_low=paired.ci_low if paired else None,
        ci_high=paired.ci_high if paired else None, n_fluent=paired.n if paired else None,
        degenerate_rate=row.metrics.get(f"{task}/{DEGENERATE}"),
    )  # fmt: skip


def _write(tunings: dict[Path, Tuning], reused: list[Path]) -> list[Path]:
    """Store each new tuning beside its vector and draw every one (what was chosen: ``describe_choice``)."""
    from steer_plugin.io.atomic import write_files_atomic
    from steer_plugin.study.tune_plot import plot_tuning, tuning_picture_path

    files: list[Path] = []
    for path, tuning in tunings.items():
        if path not in reused:
            files.append(store(path, tuning))
        files += write_files_atomic({tuning_picture_path(path): plot_tuning(tuning, path.stem)})
    return files


def describe_choice(vector: Path, tuning: Tuning) -> str:
    """One line: what was chosen for ``vector`` (or that nothing was), with its numbers."""
    c = tuning.choice
    base = f"baseline degenerate {tuning.baseline_degenerate_rate:.0%}"
    if c is None:
        return f"{vector}: no layer range within the degenerate limit ({base}); nothing chosen"
    interval = f" [{c.ci_low:+.3f}, {c.ci_high:+.3f}]" if c.ci_low is not None and c.ci_high is not None else ""
    return (
        f"{vector}: layers {c.layers} ({c.steered}) at kl:{c.kl_budget:g}: robust Δ {c.robust_delta:+.3f}{interval}, "
        f"degenerate {c.degenerate_rate:.0%} ({base}), KL {c.kl if c.kl is not None else float('nan'):.3g}"
    )


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
