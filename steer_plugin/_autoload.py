"""Install-time hook that lets the stock lm-evaluation-harness find `steered_hf` and our tasks.

lm-eval 0.4.x has no entry points for models or task folders. So the wheel ships
`steer_plugin_autoload.pth` (one line: `import _steer_plugin_autoload; _steer_plugin_autoload.install()`)
plus a top-level copy of this very file named `_steer_plugin_autoload.py`. Python runs that line at
every interpreter start; all it does is put one tiny finder at the front of `sys.meta_path`.

Why a top-level copy instead of `import steer_plugin._autoload`: importing the package at every
start would run `steer_plugin/__init__.py` (and `typing`) in every Python program, and would pin
`sys.modules["steer_plugin"]` to the installed copy, so a source checkout next to a non-editable
install would silently test the installed code. Hence this module imports nothing at the top but
`os` and `sys` (both already loaded by `site`), and uses string annotations only.

When lm_eval itself later imports one of the modules in `_HOOKS`, the finder wraps that module's
loader and runs our hook right after the module body has executed:

- `lm_eval.models`: register `steered_hf` and `steered_vllm` as lazy placeholder strings (nothing heavy is
  imported; vllm only when `steered_vllm` is asked for).
  It must come *after* `lm_eval.models` ran: `get_model` imports `lm_eval.models` only while the
  registry is empty, so registering earlier would hide every built-in model (`hf`, `vllm`, ...).
  `freeze_all()` exists in 0.4.13 but nothing in lm_eval calls it; a frozen registry only earns a
  warning here.
- `lm_eval.tasks.manager` (0.4.13) / `lm_eval.tasks` (older releases, where TaskManager lived):
  wrap `TaskManager.__init__` so that, whenever built-in tasks are included, our task folder is too.

Both copies of this file (`_steer_plugin_autoload` and `steer_plugin._autoload`) recognise each
other's work through the `_MARK` attribute, never through object identity.
"""

import os
import sys

_TYPING = False  # True for mypy only (pyproject: always_true): no `typing` import at interpreter start
if _TYPING:
    from typing import Any

# lm-eval model name -> "module:class", registered as lazy placeholders: the module (and vllm for steered_vllm)
# is imported only when lm-eval is asked for that model
MODELS = {
    "steered_hf": "steer_plugin.harness.model:SteeredHFLM",
    "steered_vllm": "steer_plugin.harness.vllm_model:SteeredVLLM",
}
# Set to any non-empty value to start Python without the hook (debugging a broken install).
DISABLE_ENV = "STEER_PLUGIN_NO_AUTOLOAD"
_MARK = "_steer_plugin_autoload"


def _warn(message: str) -> None:
    import warnings

    warnings.warn(f"steer-plugin autoload: {message}", RuntimeWarning, stacklevel=3)


# -- hooks run right after an lm_eval module executed ---------------------------------------------


def _register_model(module: "Any") -> None:
    from lm_eval.api.registry import model_registry

    # Already there: either our placeholder (second run) or the concrete class that
    # `steer_plugin.harness.model` registered itself; registering the string over a class would raise.
    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)


def _same_dir(a: "Any", b: "Any") -> bool:
    try:
        return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))
    except TypeError:
        return False


def _with_our_tasks(include_path: "Any") -> "Any":
    """`include_path` with our task folder in front, unless it is already there."""
    try:
        from steer_plugin.harness.tasks import tasks_dir

        ours = tasks_dir()
    except Exception as err:  # a broken install must not break the harness
        _warn(f"task folder not added ({err}); pass --include_path explicitly")
        return include_path
    if not include_path:  # None or "": TaskManager would skip it
        given: list = []
    elif isinstance(include_path, (list, tuple)):
        given = list(include_path)
    else:
        given = [include_path]
    # `--include_path $(steer tasks-dir)` must not index the folder twice (one warning per task).
    if any(_same_dir(p, ours) for p in given):
        return include_path
    # Ours first: TaskManager lets later paths override earlier ones, so the user's folder still wins.
    return [ours, *given]


def _patch_task_manager(module: "Any") -> None:
    manager_cls = getattr(module, "TaskManager", None)
    # Patch only where the class is defined; `lm_eval.tasks` merely re-exports it in 0.4.13.
    if manager_cls is None or getattr(manager_cls, "__module__", None) != module.__name__:
        return
    original = manager_cls.__init__
    if getattr(original, _MARK, False):
        return
    import functools
    import inspect

    signature = inspect.signature(original)
    if not {"include_path", "include_defaults"} <= signature.parameters.keys():
        _warn("unknown TaskManager signature; pass --include_path explicitly")
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        if bound.arguments["include_defaults"]:
            bound.arguments["include_path"] = _with_our_tasks(bound.arguments["include_path"])
        original(*bound.args, **bound.kwargs)

    setattr(__init__, _MARK, True)
    manager_cls.__init__ = __init__


_HOOKS = {
    "lm_eval.models": _register_model,
    "lm_eval.tasks.manager": _patch_task_manager,
    "lm_eval.tasks": _patch_task_manager,
}


def _run_hook(hook: "Any", module: "Any") -> None:
    try:
        hook(module)
    except Exception as err:  # never let our hook break `import lm_eval...`
        _warn(f"{hook.__name__} failed on {module.__name__}: {err!r}")


# -- import machinery -----------------------------------------------------------------------------


class _PostExecLoader:
    """Delegates to the real loader; runs the hook once the module body has executed."""

    def __init__(self, loader: "Any", hook: "Any") -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec: "Any") -> "Any":
        return self.loader.create_module(spec)

    def exec_module(self, module: "Any") -> None:
        # Give the module its real loader back first, so that inspect, importlib.resources and
        # importlib.reload see an untouched module.
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _run_hook(self.hook, module)

    def __getattr__(self, name: str) -> "Any":
        return getattr(self.loader, name)


class _PostImportFinder:
    """Front of `sys.meta_path`; costs one dict lookup for every import it does not care about."""

    _steer_plugin_autoload = True  # the _MARK attribute

    def __init__(self, hooks: "dict") -> None:
        self.hooks = hooks
        self._busy: set[str] = set()

    def find_spec(self, fullname: str, path: "Any" = None, target: "Any" = None) -> "Any":
        hook = self.hooks.get(fullname)
        if hook is None or fullname in self._busy:
            return None
        self._busy.add(fullname)  # a later finder asking meta_path again must not recurse into us
        try:
            spec = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if getattr(finder, _MARK, False) or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(fullname)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return None  # let the normal machinery produce its usual result or error
        spec.loader = _PostExecLoader(spec.loader, hook)
        return spec


# -- public ---------------------------------------------------------------------------------------


def is_installed() -> bool:
    """True when a steer-plugin finder (from either copy of this file) is on `sys.meta_path`."""
    return any(getattr(finder, _MARK, False) for finder in sys.meta_path)


def install() -> bool:
    """Put the finder on `sys.meta_path` (once) and hook lm_eval modules that are already imported.

    Returns False when disabled through the STEER_PLUGIN_NO_AUTOLOAD environment variable.
    """
    if os.environ.get(DISABLE_ENV):
        return False
    if not is_installed():
        sys.meta_path.insert(0, _PostImportFinder(_HOOKS))
    for name, hook in _HOOKS.items():
        module = sys.modules.get(name)
        if module is not None:
            _run_hook(hook, module)
    return True


def uninstall() -> None:
    """Remove the finder and restore `TaskManager.__init__` (for tests).

    The `steered_hf` / `steered_vllm` registry entries stay: lm_eval's registry has no public way to remove one,
    and each lazy placeholder is exactly what its module itself registers as a class.
    """
    sys.meta_path[:] = [finder for finder in sys.meta_path if not getattr(finder, _MARK, False)]
    for name in ("lm_eval.tasks.manager", "lm_eval.tasks"):
        manager_cls = getattr(sys.modules.get(name), "TaskManager", None)
        init = getattr(manager_cls, "__init__", None)
        if init is not None and getattr(init, _MARK, False):
            setattr(manager_cls, "__init__", init.__wrapped__)  # noqa: B010 (assigning a method on the class)
