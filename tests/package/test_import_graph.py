"""The package's modules import each other in one direction only, along the data flow
(errors/io <- data <- model <- vectors <- steering <- harness <- study <- cli), lazy imports inside
functions and imports only for type checking included. The package root (`steer_plugin/__init__.py`)
re-exports the public API of every stage, so it is the top: a module below it that imports from
`steer_plugin` itself imports upward."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "steer_plugin"

# the stages of the data flow, lowest first; a module may import its own stage or a lower one
STAGES = ("errors", "io", "data", "model", "vectors", "steering", "harness", "study", "cli")
ROOT = "__init__"  # the package root's module name here
# top-level modules outside the subpackages, and the stage they belong to
TOP_LEVEL = {
    "errors": "errors",
    "_version": "errors",
    "_autoload": "harness",
    "lm_model": "harness",
    "__main__": "cli",
    ROOT: "cli",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or ROOT


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "lm_eval_tasks" not in p.parts}


def _imported_module(name: str) -> str:
    """`steer_plugin.x.y` -> `x.y`; `steer_plugin` itself -> the root."""
    return name.removeprefix("steer_plugin").lstrip(".") or ROOT


def _imports(source: str, known: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "steer_plugin" or node.module.startswith("steer_plugin."):
                base = _imported_module(node.module)
                for alias in node.names:  # `from steer_plugin.x import y`: y may be a module
                    sub = f"{base}.{alias.name}" if base != ROOT else alias.name
                    found.add(sub if sub in known else base)
        elif isinstance(node, ast.Import):
            found.update(
                _imported_module(a.name)
                for a in node.names
                if a.name == "steer_plugin" or a.name.startswith("steer_plugin.")
            )
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path.read_text(encoding="utf-8"), known) - {name} for name, path in modules.items()}


def stage_of(module: str) -> int:
    head = module.split(".")[0]
    return STAGES.index(TOP_LEVEL.get(head, head))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_is_read():
    graph = import_graph()
    assert "vectors.vector" in graph and "model.hooks" in graph["harness.model"]
    assert "study.rows" in graph["study.table"]
    # `steer sweep` / `steer run` (cli.study) are thin callers of the library's study.run, which drives study.sweep
    assert "study.run" in graph["cli.study"] and "study.sweep" in graph["study.run"]
    # the root re-exports the public API (imports for type checking), so it imports every stage
    assert {"errors", "vectors.vector", "harness.model", "study.run"} <= graph[ROOT]


def test_the_root_is_seen():
    """`from steer_plugin import X` and `import steer_plugin` import the root, the top stage; a submodule named
    in `from steer_plugin import errors` is that module."""
    known = {ROOT, "errors", "vectors", "vectors.vector"}
    assert _imports("from steer_plugin import __version__", known) == {ROOT}
    assert _imports("import steer_plugin", known) == {ROOT}
    assert _imports("from steer_plugin import errors as e", known) == {"errors"}
    assert _imports("import steer_plugin.vectors.vector", known) == {"vectors.vector"}
    assert stage_of(ROOT) == len(STAGES) - 1


def test_no_import_cycles_not_even_for_type_checking():
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_every_module_belongs_to_a_stage():
    for module in import_graph():
        assert module.split(".")[0] in STAGES or module.split(".")[0] in TOP_LEVEL, module


def test_imports_follow_the_data_flow():
    """No module imports a later stage: the library never imports the CLI, the vectors never the harness."""
    upward = {(m, d) for m, deps in import_graph().items() for d in deps if stage_of(d) > stage_of(m)}
    assert not upward, sorted(upward)


def test_the_command_line_parser_imports_no_torch():
    """`steer --help` must start instantly: building the parser may not import torch (or anything heavy)."""
    import subprocess
    import sys

    code = "import sys; from steer_plugin.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_reading_results_imports_no_torch():
    """`steer table` / `steer report` read results files without torch; the classifier module loads it only
    when a model scores (the emotion tasks import it while lm-eval builds them)."""
    import subprocess
    import sys

    code = (
        "import sys; import steer_plugin.study.table, steer_plugin.study.report, steer_plugin.harness.classifier; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_reading_kl_alphas_imports_no_torch():
    """`--alphas kl:0.1` is parsed while the arguments are read, before `main`'s work starts: light, like `--help`."""
    import subprocess
    import sys

    code = (
        "import sys; from steer_plugin.cli import build_parser; "
        "a = build_parser().parse_args(['sweep', '--vector', 'v', '--alphas', '0,kl:0.1', '--out', 'o']); "
        "print(len(a.alphas), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "2 False"


def test_the_study_reaches_the_model_through_the_engine_handle():
    """The sweep and the main job drive "a model we can steer" through ``harness.engine`` only: no study module
    imports the transformers model (``harness.model``), and the sweep imports nothing from ``model/`` at all, so a
    second engine needs no change in the study stage."""
    graph = import_graph()
    study = {m: deps for m, deps in graph.items() if m.startswith("study.")}
    assert not {m for m, deps in study.items() if "harness.model" in deps}
    assert not {d for d in graph["study.sweep"] if d.startswith("model.")}
    assert "harness.engine" in graph["study.sweep"] and "harness.engine" in graph["study.run"]
