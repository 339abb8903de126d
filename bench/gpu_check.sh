#!/usr/bin/env bash
# The GPU path at paper scale on one lent H100/H200 (issue 17, item 5): installs what it needs,
# then prints one JSON (bench/gpu_check.py says what each part measures). Under 8 minutes there.
#
#   bash bench/gpu_check.sh            # on the GPU machine
#   bash bench/gpu_check.sh --dry-run  # every part on the CPU at tiny sizes, seconds (the tests run it)
#
# PYTHON picks the interpreter (default: .venv/bin/python when there is one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [[ " $* " != *" --dry-run "* ]]; then
  # The project with FAISS's GPU build (never both FAISS wheels: the cpu one would shadow it).
  "$PYTHON" -m pip uninstall -q -y faiss-cpu >/dev/null 2>&1 || true
  "$PYTHON" -m pip install -q -e ".[gpu]" >&2
fi
exec "$PYTHON" bench/gpu_check.py "$@"
