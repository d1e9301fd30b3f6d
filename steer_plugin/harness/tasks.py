"""Where our lm-evaluation-harness task YAMLs live (`steer tasks-dir`, the autoload hook)."""

from pathlib import Path

from steer_plugin.errors import SteerError

TASKS_FOLDER = "lm_eval_tasks"
# the truthfulqa_local tasks read their JSONL folder from task metadata ``truthfulqa_dir``, else from this variable
TRUTHFULQA_DIR_ENV = "STEER_TRUTHFULQA_DIR"


def tasks_dir() -> Path:
    """The folder holding our task YAMLs, for an installed wheel and for a source/editable checkout.

    The wheel force-includes the repo's `lm_eval_tasks/` as `steer_plugin/lm_eval_tasks/`; a source
    checkout (and the editable install, which imports from it) has it next to the package.
    The installed location is tried first so a wheel never picks up an unrelated
    `site-packages/lm_eval_tasks`.
    """
    package = Path(__file__).resolve().parents[1]  # steer_plugin/
    candidates = (package / TASKS_FOLDER, package.parent / TASKS_FOLDER)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise SteerError(
        "task folder not found; looked in "
        + " and ".join(str(c) for c in candidates)
        + " (reinstall steer-plugin, or run from a checkout that has lm_eval_tasks/)"
    )


def check_include_path(folder: str | None) -> None:
    """``--include-path``: a folder of task YAMLs; a missing one is a mistake, not an empty task list."""
    if folder is not None and not Path(folder).expanduser().is_dir():
        what = "does not exist" if not Path(folder).expanduser().exists() else "is not a folder"
        raise SteerError(f"--include-path {folder!r} {what}: give a folder of task YAMLs")


EMOTION_TASK_PREFIX = "steer_emotion_"  # our generation tasks: steer_emotion_<target>, steer_emotion_continue_<target>


def is_emotion_task(name: str) -> bool:
    """A leaf task of ours whose generations an emotion classifier scores (apply it to task names, not groups)."""
    return name.startswith(EMOTION_TASK_PREFIX)


def emotion_task_target(name: str) -> str | None:
    """The class an emotion task scores (``steer_emotion_anger`` -> ``anger``, ``steer_emotion_continue_ekman_joy``
    -> ``ekman:joy``); None for another task, or a name that is no class (the task index reports it)."""
    from steer_plugin.data.goemotions import canonical_target

    if not is_emotion_task(name):
        return None
    rest = name.removeprefix(EMOTION_TASK_PREFIX)
    rest = rest.removeprefix("continue_") if rest != "continue" else rest
    try:
        return canonical_target(rest)
    except SteerError:
        return None
