"""Run the tests of the lm-eval model (`steered_hf`) against the lowest and the highest lm-eval that pyproject allows.

    python scripts/lm_eval_range.py [PYTEST_ARGS...]      (from the repository root; `make test-lm-eval-range`)

`steer_plugin.harness` subclasses lm-eval's HFLM and imports its helpers (`lm_eval.models.utils_hf`, the
registry, the Collator), which move between lm-eval releases; the venv holds just one lm-eval, the newest at
install time. For each end of pyproject's `lm-eval` range this installs that lm-eval alone (`--no-deps`) into a
scratch folder, adds whatever of its requirements the venv does not meet (0.4.10 and 0.4.11 needed `jsonlines`,
which the venv lacks), and runs the test files below with that folder first on PYTHONPATH. Needs PyPI; about a
minute of CPU per version.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
# the model, its arguments, its registration and task folder, prefix reuse and batched sweeps through lm-eval
TESTS = (
    "tests/harness/test_model.py",
    "tests/harness/test_model_args.py",
    "tests/package/test_autoload.py",
    "tests/harness/test_prefix_reuse.py",
    "tests/harness/test_config_batching.py",
)


def allowed_range() -> SpecifierSet:
    """pyproject's `lm-eval` specifier (the dependency line, read as text: tomllib is 3.11+)."""
    found = re.search(r'^\s*"lm-eval([^";]*)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.MULTILINE)
    if not found:
        sys.exit("no lm-eval dependency in pyproject.toml")
    return SpecifierSet(found.group(1))


def floor(allowed: SpecifierSet) -> str:
    floors = [s.version for s in allowed if s.operator == ">="]
    if len(floors) != 1:
        sys.exit(f"lm-eval {allowed}: expected one `>=` floor")
    return floors[0]


def pip_install(target: Path, *requirements: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *requirements]
    subprocess.run(cmd, check=True)


def unmet(target: Path) -> list[str]:
    """Requirements of the packages in `target` that neither `target` nor the venv meets."""
    search = [str(target), *sys.path]
    missing = []
    for dist in metadata.distributions(path=[str(target)]):
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue  # an extra's or another platform's
            have = next(iter(metadata.distributions(name=req.name, path=search)), None)
            if have is None or not req.specifier.contains(have.version, prereleases=True):
                missing.append(str(req))
    return sorted(set(missing))


def install(requirement: str, target: Path) -> str:
    """lm-eval into `target`, then its unmet requirements (and theirs); the lm-eval version installed."""
    pip_install(target, requirement)
    for _ in range(5):
        if not (missing := unmet(target)):
            return next(iter(metadata.distributions(name="lm_eval", path=[str(target)]))).version
        print(f"  adding what the venv lacks: {' '.join(missing)}", flush=True)
        pip_install(target, *missing)
    sys.exit(f"still unmet after 5 rounds: {unmet(target)}")


def run_tests(target: Path, version: str, pytest_args: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(target), os.environ.get("PYTHONPATH"))))}
    probe = "import importlib.metadata as m, lm_eval; print(m.version('lm_eval'), lm_eval.__file__)"
    seen = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    print(f"  tests import lm-eval {seen.stdout.strip()}", flush=True)
    if seen.stdout.split()[0] != version:  # the venv's lm-eval would shadow the one under test
        sys.exit(f"expected lm-eval {version} first on the path")
    return subprocess.run([sys.executable, "-m", "pytest", *pytest_args, *TESTS], env=env, cwd=REPO).returncode


def main(pytest_args: list[str]) -> int:
    allowed = allowed_range()
    ends = {"lowest": f"lm-eval=={floor(allowed)}", "highest": f"lm-eval{allowed}"}  # pip picks the newest allowed
    outcomes = []
    for end, requirement in ends.items():
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="lm-eval-range-") as scratch:
            print(f"== {end} allowed lm-eval ({requirement})", flush=True)
            version = install(requirement, Path(scratch))
            rc = run_tests(Path(scratch), version, pytest_args)
        outcomes.append((end, version, rc, time.monotonic() - start))
    for end, version, rc, seconds in outcomes:
        print(f"lm-eval {version} ({end}): {'passed' if rc == 0 else 'FAILED'} in {seconds:.0f} s")
    return max(rc for _, _, rc, _ in outcomes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
