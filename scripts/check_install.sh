#!/usr/bin/env bash
# Fresh-venv check of the lm-eval autoload (steer_plugin/_autoload.py + steer_plugin_autoload.pth).
#
# For a regular wheel install and for an editable install, in a venv without system site packages:
#   - the stock `lm_eval` / `lm-eval run` CLIs and `lm_eval.simple_evaluate` resolve `--model steered_hf`
#     to steer_plugin.harness.model:SteeredHFLM (the run may then fail inside that module: fine; what must
#     never appear is lm_eval's "no model for this name"),
#   - a default TaskManager (and `lm-eval ls tasks`) sees our task folder without --include_path,
#   - the .pth costs nothing measurable at interpreter start (python -X importtime, wall time),
#   - `pip uninstall` removes the .pth and its module and `python -c pass` stays silent.
#
# Usage: scripts/check_install.sh [SRC_DIR]   (default: this checkout; needs PyPI for the deps)
# Env:   WORK=/tmp/dir (scratch, default mktemp), PYTHON=python3.11, MODES="wheel editable"
set -euo pipefail

SRC=$(cd "${1:-$(dirname "$0")/..}" && pwd)
WORK=${WORK:-$(mktemp -d /tmp/steer_check_XXXXXX)}
PYTHON=${PYTHON:-python3}
MODES=${MODES:-"wheel editable"}
VENV="$WORK/venv"
PY="$VENV/bin/python"
FAILED=0

pipq() {  # pip, its chatter into $WORK/pip.log
  "$PY" -m pip "$@" >>"$WORK/pip.log" 2>&1 || { tail -20 "$WORK/pip.log"; echo "pip $* failed"; exit 1; }
}
say() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; FAILED=1; }

say "venv in $VENV (source: $SRC)"
"$PYTHON" -m venv "$VENV"
pipq install torch==2.13.0
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

say "building the wheel"
rm -rf "$WORK/dist"
pipq wheel --no-deps -w "$WORK/dist" "$SRC"
WHEEL=$(ls "$WORK"/dist/steer_plugin-*.whl)
ok "$WHEEL"

# Resolution probe: lm_model.py may not exist or may fail to load the (nonexistent) model; either
# way the traceback must come from steer_plugin.harness.model, not from lm_eval's name lookup.
check_resolves() {  # label, command...
  local label=$1 out
  shift
  out=$("$@" 2>&1 || true)
  if grep -q "no model for this name" <<<"$out"; then
    fail "$label: lm_eval did not find steered_hf"; tail -5 <<<"$out"
  elif grep -Eq "steer_plugin[./]lm_model|SteeredHFLM" <<<"$out"; then
    ok "$label: steered_hf -> steer_plugin.harness.model ($(grep -E 'Error|error' <<<"$out" | tail -1 | cut -c1-150))"
  else
    fail "$label: unexpected output"; tail -15 <<<"$out"
  fi
}

check_installed() {  # mode
  local mode=$1 tasks_dir task
  [[ -f "$SITE/steer_plugin_autoload.pth" && -f "$SITE/_steer_plugin_autoload.py" ]] \
    && ok "$mode: .pth and _steer_plugin_autoload.py in site-packages" || fail "$mode: autoload files missing"

  local entry
  entry=$(cd "$WORK" && "$PY" -c 'import sys, lm_eval.models
from lm_eval.api.registry import model_registry as r, get_model
assert "steer_plugin.harness.model" not in sys.modules, "registration must stay lazy"
print(dict(r.items())["steered_hf"], get_model("dummy").__name__)' 2>&1) || true
  [[ $entry == "steer_plugin.harness.model:SteeredHFLM DummyLM" ]] \
    && ok "$mode: registry entry is the lazy target, built-ins intact" || fail "$mode: registry entry: $entry"

  # Task folder as the package sees it; names from our YAMLs (if any are written yet).
  tasks_dir=$(cd "$WORK" && "$PY" -c 'from steer_plugin.harness.tasks import tasks_dir; print(tasks_dir())' 2>&1) || true
  ok "$mode: tasks_dir() = $tasks_dir"
  task=$(grep -rhoE '^task: *[A-Za-z0-9_.-]+' "$tasks_dir" --include='*.yaml' 2>/dev/null | head -1 | sed 's/task: *//' || true)
  local listing
  listing=$(cd "$WORK" && "$VENV/bin/lm-eval" ls tasks 2>&1 || true)
  if [[ -n $task ]]; then
    grep -q -- "$task" <<<"$listing" && ok "$mode: 'lm-eval ls tasks' lists $task" || fail "$mode: $task not listed"
  else
    echo "note: $tasks_dir has no task YAMLs yet; checking the include path instead"
    local paths
    paths=$(cd "$WORK" && "$PY" -c 'from lm_eval.tasks import TaskManager as T; print(T(include_defaults=True).include_path)' 2>&1) || true
    grep -q -- "$tasks_dir" <<<"$paths" && ok "$mode: default TaskManager includes $tasks_dir" || fail "$mode: include_path=$paths"
    task=arc_easy
  fi

  local args=(--model steered_hf --model_args pretrained=/nonexistent/model --tasks "$task" --limit 1)
  check_resolves "$mode: lm_eval" bash -c "cd '$WORK' && '$VENV/bin/lm_eval' ${args[*]}"
  check_resolves "$mode: lm-eval run" bash -c "cd '$WORK' && '$VENV/bin/lm-eval' run ${args[*]}"
  check_resolves "$mode: simple_evaluate" bash -c "cd '$WORK' && '$PY' -c \"import lm_eval; lm_eval.simple_evaluate(model='steered_hf', model_args='pretrained=/nonexistent/model', tasks=['$task'], limit=1)\""
}

measure_startup() {  # importtime of our module; wall time of `python -c pass` with and without the .pth
  say "interpreter start cost"
  (cd "$WORK" && "$PY" -X importtime -c pass 2>&1 | grep -E 'autoload|site$' || true)
  "$PY" - "$SITE/steer_plugin_autoload.pth" <<'EOF'
import os, statistics, subprocess, sys, time
pth, py = sys.argv[1], sys.executable
def median_ms(n=40):
    runs = []
    for _ in range(n):
        t = time.perf_counter(); subprocess.run([py, "-c", "pass"], check=True); runs.append(time.perf_counter() - t)
    return 1000 * statistics.median(runs)
with_pth = median_ms()
os.rename(pth, pth + ".off")
try:
    without = median_ms()
finally:
    os.rename(pth + ".off", pth)
with_pth2 = median_ms()
print(f"python -c pass, median of 40: with .pth {with_pth:.2f} / {with_pth2:.2f} ms, without {without:.2f} ms")
EOF
}

check_uninstalled() {  # mode
  local mode=$1 err
  pipq uninstall -y steer-plugin
  [[ ! -e "$SITE/steer_plugin_autoload.pth" && ! -e "$SITE/_steer_plugin_autoload.py" ]] \
    && ok "$mode: uninstall removed the .pth and its module" || fail "$mode: autoload files left behind"
  err=$(cd "$WORK" && "$PY" -c pass 2>&1)
  [[ -z $err ]] && ok "$mode: python -c pass is silent after uninstall" || fail "$mode: $err"
  (cd "$WORK" && "$PY" -c 'import lm_eval.models
from lm_eval.api.registry import model_registry as r
assert "steered_hf" not in r and "hf" in r') && ok "$mode: steered_hf gone, built-ins intact" || fail "$mode: registry after uninstall"
}

for mode in $MODES; do
  say "mode: $mode"
  if [[ $mode == wheel ]]; then
    pipq install "$WHEEL"
  else
    pipq install -e "$SRC"
  fi
  check_installed "$mode"
  [[ $mode == wheel ]] && measure_startup
  check_uninstalled "$mode"
done

say "done (scratch: $WORK)"
[[ $FAILED == 0 ]] && echo "ALL OK" || { echo "SOME CHECKS FAILED"; exit 1; }
