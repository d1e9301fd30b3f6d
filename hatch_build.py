"""Hatch build hook for the lm-eval autoload (see steer_plugin/_autoload.py).

1. The `.pth` imports a *top-level* copy of `steer_plugin/_autoload.py` named
   `_steer_plugin_autoload.py`, so interpreter start never imports the `steer_plugin` package.
   A `force-include` entry cannot do this: hatchling treats a force-included in-tree file as moved
   and would drop `steer_plugin/_autoload.py` from the package. So the copy is made here, outside
   the project tree, and force-included from there.
2. Hatchling puts `force-include` into editable wheels too. The `.pth` and the top-level copy must
   be in site-packages, but a copy of `lm_eval_tasks/` under `site-packages/steer_plugin/` would be
   a stale duplicate of the source tree the editable install imports from, so editable wheels get
   only the entries that land outside the package.
"""

import os
import shutil
import tempfile

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

AUTOLOAD_SOURCE = "steer_plugin/_autoload.py"
AUTOLOAD_TOP_LEVEL = "_steer_plugin_autoload.py"
PACKAGE_PREFIX = "steer_plugin/"


class AutoloadBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        self._scratch = tempfile.mkdtemp(prefix="steer_plugin_build_")
        alias = os.path.join(self._scratch, AUTOLOAD_TOP_LEVEL)
        shutil.copyfile(os.path.join(self.root, AUTOLOAD_SOURCE), alias)
        build_data["force_include"][alias] = AUTOLOAD_TOP_LEVEL
        if version == "editable":
            outside_package = {
                source: target
                for source, target in self.build_config.force_include.items()
                if not target.replace("\\", "/").startswith(PACKAGE_PREFIX)
            }
            build_data["force_include_editable"] = {**outside_package, alias: AUTOLOAD_TOP_LEVEL}

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
