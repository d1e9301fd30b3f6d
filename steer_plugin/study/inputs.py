"""What a sweep's results depend on besides its settings: the contents of its input files, as fingerprints in
the sweep's identity (``sweep_folder.sweep_settings``). A results file whose inputs changed since (the same
paths, other contents; or a variable pointed at other files) is another sweep's, never resumed.

Each fingerprint is None where there is nothing on this machine to read (a hub model or data set not yet
downloaded, the built-in classifier by name, no such input in this sweep); None is not compared, as a folder
of an earlier version, which recorded none, resumes (the fingerprints are recorded from then on).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from steer_plugin.data.goemotions import neutral_texts_location
from steer_plugin.harness.classifier import NADE_NAME, resolve_classifier_name
from steer_plugin.harness.tasks import TRUTHFULQA_DIR_ENV, is_emotion_task
from steer_plugin.io.fingerprint import path_fingerprint
from steer_plugin.model.fingerprint import model_files_fingerprint, weights_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.study.plan import SweepOptions

# settings key -> what changed, as a refusal says it
INPUTS: dict[str, str] = {
    "model_files": "the model's config or tokenizer files changed",
    "neutral_texts": "the neutral texts changed",
    "truthfulqa_data": "the TruthfulQA data changed",
    "goemotions_data": "the GoEmotions data of the tasks changed",
    "classifier_files": "the classifier's files changed",
    "task_files": "the task definitions under --include-path changed",
}
OWN_DATA_TASKS = "steer_"  # our tasks that read GoEmotions texts (steer_emotion_continue_*, steer_fluency*)


def input_fingerprints(options: SweepOptions) -> dict[str, str | None]:
    """The fingerprint of every input of this sweep (``INPUTS``' keys)."""
    args = options.model_args
    tasks = list(options.tasks)
    metadata = options.task_metadata
    source = options.side_effects.resolved() if options.side_effects is not None else None
    truthfulqa = metadata.get("truthfulqa_dir") or os.environ.get(TRUTHFULQA_DIR_ENV)
    goemotions = neutral_texts_location(metadata.get("goemotions_dir"))
    return {
        "model_files": model_files_fingerprint(str(args.get("pretrained") or ""), args.get("revision")),
        "neutral_texts": path_fingerprint(source),
        "truthfulqa_data": path_fingerprint(truthfulqa) if any("truthfulqa_local" in t for t in tasks) else None,
        "goemotions_data": path_fingerprint(goemotions) if any(t.startswith(OWN_DATA_TASKS) for t in tasks) else None,
        "classifier_files": classifier_fingerprint(options.classifier) if any(map(is_emotion_task, tasks)) else None,
        "task_files": path_fingerprint(options.include_path, recursive=True),
    }


def classifier_fingerprint(name: str | None) -> str | None:
    """The emotion classifier's weights and its config/tokenizer files (its labels live in its config); None for
    the built-in nade, or a hub classifier not downloaded yet."""
    chosen = resolve_classifier_name(name)
    if chosen == NADE_NAME:
        return None  # its lexicon ships with the package: the package version is in the settings
    weights, files = weights_fingerprint(chosen), model_files_fingerprint(chosen)
    return None if weights is None and files is None else f"{weights}:{files}"


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two sweeps' settings, among the inputs both recorded."""
    return [why for key, why in INPUTS.items() if None not in (old.get(key), new.get(key)) and old[key] != new[key]]
