"""The harness tasks of a sweep: indexed and built once, then grouped by how their prompts are formatted (the chat
template for some, a system instruction for the prompting reference). Light at import time: lm_eval loads inside."""

from __future__ import annotations

from typing import Any

from steer_plugin.data.prompts import emotion_instruction
from steer_plugin.errors import SteerError
from steer_plugin.harness.tasks import check_include_path, is_emotion_task, tasks_dir
from steer_plugin.steering.config import SteeringConfig
from steer_plugin.study.plan import SweepOptions


def task_manager(options: SweepOptions, metadata: dict[str, Any] | None = None) -> Any:
    """The harness's task index for these tasks (honouring the classifier metadata and our task folder); an
    unknown task is an error here, before any model loads.

    ``metadata``: more task metadata (lm-eval's ``--metadata``) than ``options.task_metadata``."""
    from lm_eval.tasks import TaskManager

    check_include_path(options.include_path)
    includes = [str(tasks_dir())] + ([options.include_path] if options.include_path else [])
    metadata = {
        **({"classifier": options.classifier} if options.classifier else {}),
        **options.task_metadata,
        **(metadata or {}),
    }
    # our folders alone index in a second; the harness's own ~10k task files take ~20 s, so only when needed
    manager = TaskManager(include_path=includes, metadata=metadata, include_defaults=False)
    if any(t not in manager.all_tasks for t in options.tasks):
        manager = TaskManager(include_path=includes, metadata=metadata)
    unknown = [t for t in options.tasks if t not in manager.all_tasks]
    if unknown:
        raise SteerError(f"unknown task(s) {', '.join(unknown)}; see `lm_eval ls tasks` or `steer tasks-dir`")
    return manager


def load_tasks(options: SweepOptions, metadata: dict[str, Any] | None = None, manager: Any = None) -> dict[str, Any]:
    """Build the harness tasks once, from ``manager`` (``task_manager(options, metadata)`` when None)."""
    manager = manager or task_manager(options, metadata)
    loaded = manager.load(options.tasks)
    for task in loaded["tasks"].values():
        if options.gen_kwargs and task.get_config("output_type") == "generate_until":
            task.set_config(key="generation_kwargs", value=options.gen_kwargs, update=True)
        if options.num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=options.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=1234)
    return loaded


def chat_tasks(loaded: dict[str, Any], spec: bool | list[str]) -> set[str]:
    """The leaf tasks whose prompts go through the chat template: all (True), none (False), or those named
    (a group names all of its tasks)."""
    if spec is True or spec is False:
        return set(loaded["tasks"]) if spec else set()
    named = set(spec)
    chosen = {n for n in loaded["tasks"] if n in named}
    for name, group in loaded.get("groups", {}).items():
        if name in named:
            chosen |= {t.task_name for t in group.get_all_tasks()}
    return chosen


def _subset(loaded: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The task dict of some of the loaded tasks, with the groups all of whose tasks are among them."""
    keep = set(names)
    groups = {
        g: grp for g, grp in loaded.get("groups", {}).items() if {t.task_name for t in grp.get_all_tasks()} <= keep
    }
    return {
        "tasks": {n: t for n, t in loaded["tasks"].items() if n in keep},
        "groups": groups,
        "group_map": {g: c for g, c in loaded.get("group_map", {}).items() if g in groups},
    }


def formatting_groups(
    loaded: dict[str, Any], options: SweepOptions, config: SteeringConfig
) -> list[tuple[dict[str, Any], bool, str | None]]:
    """One configuration's tasks by how their prompts are formatted: (task dict, chat template, system instruction).

    The harness formats all tasks of one evaluation alike, so tasks with and without the chat template
    (``steer run``: the emotion tasks with it, TruthfulQA as the harness formats it) are evaluated apart. A
    prompted configuration (the prompting reference) runs only the emotion tasks, its instruction as the system
    message (or, without a chat template, before the prompt)."""
    names = [n for n in loaded["tasks"] if config.prompted is None or is_emotion_task(n)]
    if not names:
        raise SteerError("the prompting reference needs an emotion task (steer_emotion_*) among the tasks")
    chat = chat_tasks(loaded, options.apply_chat_template)
    instruction = emotion_instruction(config.prompted) if config.prompted else None
    out = []
    for templated in (True, False):
        part = [n for n in names if (n in chat) == templated]
        if part:
            out.append((_subset(loaded, part), templated, instruction))
    return out
