"""The stock lm-eval finds `steered_hf` and our task folder through the install-time autoload hook.

In-process tests call `steer_plugin._autoload.install()` themselves (a source checkout has no .pth).
The wheel tests build real wheels with hatchling from a copy of the project and run the unpacked
wheel as a site dir in a subprocess, which is what `pip install` + interpreter start amounts to.
The full fresh-venv install/uninstall round trip is scripts/check_install.sh (too slow for here).
"""

import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAZY_TARGET = "steer_plugin.harness.model:SteeredHFLM"
PROBE_TASK = "steer_autoload_probe"
PROBE_YAML = f"""\
task: {PROBE_TASK}
dataset_path: json
dataset_kwargs:
  data_files: probe.jsonl
test_split: train
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
TASK_LINE = re.compile(r"^task:\s*['\"]?([A-Za-z0-9_.\-]+)", re.MULTILINE)
GROUP = re.compile(r"^group:", re.MULTILINE)


def declared_task_names(folder: Path) -> set[str]:
    """Names of the (YAML or Python-class) tasks our YAMLs declare, read with a regex rather than
    lm_eval's loader; group YAMLs are left out."""
    names = set()
    for path in folder.rglob("*.yaml"):
        if "__pycache__" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        match = TASK_LINE.search(text)
        if match and not GROUP.search(text):
            names.add(match.group(1))
    return names


def tasks_copy_with_probe(dest: Path) -> Path:
    """Our real task folder (whatever it holds today) plus one probe task that always exists."""
    shutil.copytree(REPO / "lm_eval_tasks", dest, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / f"{PROBE_TASK}.yaml").write_text(PROBE_YAML, encoding="utf-8")
    return dest


@pytest.fixture
def autoload():
    from steer_plugin import _autoload

    if os.environ.get(_autoload.DISABLE_ENV):
        pytest.skip(f"{_autoload.DISABLE_ENV} is set")
    was_installed = _autoload.is_installed()  # e.g. the .pth of an editable install
    assert _autoload.install()
    yield _autoload
    if not was_installed:
        _autoload.uninstall()


# -- in-process --------------------------------------------------------------------------------


def test_steered_hf_is_registered_lazily_and_builtins_still_resolve(autoload):
    import lm_eval.models
    from lm_eval.api.registry import get_model, model_registry

    entry = dict(model_registry.items())["steered_hf"]
    if isinstance(entry, str):
        assert entry == LAZY_TARGET
    else:  # another test imported steer_plugin.harness.model, whose @register_model upgrades the string
        assert f"{entry.__module__}:{entry.__name__}" == LAZY_TARGET

    # Every built-in name is still there, and `hf` resolves to the class its mapping names.
    assert set(lm_eval.models.MODEL_MAPPING) <= set(model_registry.keys())
    module_name, _, attr = lm_eval.models.MODEL_MAPPING["hf"].partition(":")
    assert get_model("hf") is getattr(importlib.import_module(module_name), attr)


def test_steered_vllm_is_registered_lazily_without_importing_vllm(autoload):
    """`steered_vllm` is a placeholder until lm-eval is asked for it: registering it imports neither our vLLM
    module nor vllm (absent from most installs)."""
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    entry = dict(model_registry.items())["steered_vllm"]
    target = "steer_plugin.harness.vllm_model:SteeredVLLM"
    assert entry == target if isinstance(entry, str) else f"{entry.__module__}:{entry.__name__}" == target
    if isinstance(entry, str):
        assert "steer_plugin.harness.vllm_model" not in sys.modules


def test_lm_model_decorator_upgrades_the_placeholder(autoload):
    """Source checkouts rely on `@register_model("steered_hf")` in lm_model.py; with the hook
    installed that decorator must upgrade our string placeholder, not collide with it."""
    import lm_eval.models  # noqa: F401  (hook registers the placeholder first)
    from lm_eval.api.registry import get_model

    lm_model = importlib.import_module("steer_plugin.harness.model")
    assert get_model("steered_hf") is lm_model.SteeredHFLM
    module_name, _, attr = LAZY_TARGET.partition(":")
    assert (lm_model.__name__, lm_model.SteeredHFLM.__name__) == (module_name, attr)


def test_default_task_manager_indexes_our_folder(autoload, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    import steer_plugin.harness.tasks as tasks_dir_module

    folder = tasks_copy_with_probe(tmp_path / "lm_eval_tasks")
    monkeypatch.setattr(tasks_dir_module, "tasks_dir", lambda: folder)

    manager = TaskManager()  # scans all ~15k built-in YAMLs too (~8 s)

    expected = declared_task_names(folder)
    assert PROBE_TASK in expected
    assert expected <= set(manager.all_subtasks)
    assert manager.task_index[PROBE_TASK].yaml_path.parent == folder
    assert "arc_easy" in manager.all_subtasks  # built-ins still indexed


def test_our_folder_is_not_added_without_defaults(autoload, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    import steer_plugin.harness.tasks as tasks_dir_module

    folder = tasks_copy_with_probe(tmp_path / "ours")
    other = tmp_path / "other"
    other.mkdir()
    (other / "other.yaml").write_text(PROBE_YAML.replace(PROBE_TASK, "steer_other_probe"))
    monkeypatch.setattr(tasks_dir_module, "tasks_dir", lambda: folder)

    manager = TaskManager(include_path=str(other), include_defaults=False)

    assert manager.all_subtasks == ["steer_other_probe"]


def test_include_path_merging(autoload, tmp_path, monkeypatch):
    import steer_plugin.harness.tasks as tasks_dir_module

    ours = tmp_path / "ours"
    ours.mkdir()
    monkeypatch.setattr(tasks_dir_module, "tasks_dir", lambda: ours)
    merge = autoload._with_our_tasks

    assert merge(None) == [ours]
    assert merge("") == [ours]
    assert merge("user") == [ours, "user"]  # user's folder last, so it overrides ours
    assert merge(("a", Path("b"))) == [ours, "a", Path("b")]
    # `--include_path $(steer tasks-dir)`: not indexed twice (same folder through a symlink too)
    assert merge(str(ours)) == str(ours)
    (tmp_path / "link").symlink_to(ours)
    assert merge([tmp_path / "link"]) == [tmp_path / "link"]


def test_tasks_dir_in_source_layout():
    import steer_plugin
    from steer_plugin.harness.tasks import tasks_dir

    if Path(steer_plugin.__file__).resolve().parents[1] != REPO:
        pytest.skip("steer_plugin is imported from an installed wheel, not this checkout")
    assert tasks_dir() == (REPO / "lm_eval_tasks").resolve()


# -- wheels ------------------------------------------------------------------------------------


def project_copy(dest: Path) -> Path:
    """Top-level files, the package and the task folder (plus the probe) — what a build needs."""
    dest.mkdir()
    for path in REPO.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, dest / path.name)
    if not (dest / "README.md").exists():  # pyproject's readme; not this test's subject
        (dest / "README.md").write_text("# steer-plugin\n")
    shutil.copytree(REPO / "steer_plugin", dest / "steer_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    tasks_copy_with_probe(dest / "lm_eval_tasks")
    return dest


def build(project: Path, out: Path, hook: str) -> Path:
    out.mkdir()
    code = f"from hatchling.build import {hook}; print({hook}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("hatchling", reason="hatchling (build backend) is needed to build the wheel")
    tmp = tmp_path_factory.mktemp("wheel")
    return build(project_copy(tmp / "project"), tmp / "dist", "build_wheel")


@pytest.mark.slow  # builds a wheel in a subprocess
def test_wheel_ships_autoload_and_tasks(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        pth = archive.read("steer_plugin_autoload.pth").decode()
        top_level_copy = archive.read("_steer_plugin_autoload.py")
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        recorded = {line.split(",")[0] for line in archive.read(record).decode().splitlines()}
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()

    # the version's one source is steer_plugin/_version.py (pyproject's [tool.hatch.version])
    from steer_plugin import __version__

    assert f"\nVersion: {__version__}\n" in metadata

    assert pth.strip() == "import _steer_plugin_autoload; _steer_plugin_autoload.install()"
    assert top_level_copy == (REPO / "steer_plugin" / "_autoload.py").read_bytes()
    assert {
        "steer_plugin/_autoload.py",
        "steer_plugin/harness/tasks.py",
        "steer_plugin/data/generation_prompts.txt",
        "steer_plugin/study/report_page.html",  # the report page's template, read at run time
    } <= names
    tasks = REPO / "lm_eval_tasks"
    expected_tasks = {
        "steer_plugin/lm_eval_tasks/" + p.relative_to(tasks).as_posix()
        for p in tasks.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    } | {f"steer_plugin/lm_eval_tasks/{PROBE_TASK}.yaml"}
    assert expected_tasks <= names
    # RECORD is what `pip uninstall` deletes: the .pth and the top-level module must be in it.
    assert {"steer_plugin_autoload.pth", "_steer_plugin_autoload.py"} <= recorded


@pytest.mark.slow  # builds a wheel in a subprocess
def test_editable_wheel_ships_autoload_but_no_task_copy(tmp_path):
    pytest.importorskip("hatchling", reason="hatchling (build backend) is needed to build the wheel")
    pytest.importorskip("editables", reason="hatchling needs `editables` for editable wheels")
    wheel = build(project_copy(tmp_path / "project"), tmp_path / "dist", "build_editable")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"steer_plugin_autoload.pth", "_steer_plugin_autoload.py"} <= names
    # The editable install imports the source tree, which has the tasks: no stale copy.
    assert not any(n.startswith("steer_plugin/") for n in names)


@pytest.mark.slow  # builds a wheel, imports lm_eval in a fresh interpreter
def test_unpacked_wheel_as_site_dir_hooks_lm_eval(wheel, tmp_path):
    site_dir = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site_dir)
    # site.addsitedir runs the .pth exactly like interpreter start does for site-packages.
    script = textwrap.dedent(
        f"""
        import site, sys
        sys.path.insert(0, {str(site_dir)!r})
        site.addsitedir({str(site_dir)!r})
        assert "steer_plugin" not in sys.modules, "the .pth must not import the package"
        assert any(getattr(f, "_steer_plugin_autoload", False) for f in sys.meta_path)

        from lm_eval.api.registry import get_model, model_registry
        assert get_model("dummy").__name__ == "DummyLM"  # get_model imports lm_eval.models
        assert dict(model_registry.items())["steered_hf"] == {LAZY_TARGET!r}
        assert "steer_plugin.harness.model" not in sys.modules, "registration must stay lazy"

        from lm_eval.tasks import TaskManager
        assert getattr(TaskManager.__init__, "_steer_plugin_autoload", False)
        from steer_plugin.harness.tasks import tasks_dir
        assert tasks_dir() == __import__("pathlib").Path({str(site_dir)!r}).resolve() / "steer_plugin" / "lm_eval_tasks"
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STEER_PLUGIN_NO_AUTOLOAD")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
