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
# Installs only where there is a GPU to measure (elsewhere every part reports "skipped").
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi >/dev/null 2>&1; then
  # The project with FAISS's GPU build (never both FAISS wheels: the cpu one would shadow it). The
  # wheel is fetched first, so a machine that cannot reach the registry keeps its working FAISS
  # (its FAISS parts then report an error, the others still run).
  wheels="$(mktemp -d)"
  if "$PYTHON" -m pip download -q --no-deps -d "$wheels" "faiss-gpu==1.15.1" >&2; then
    "$PYTHON" -m pip uninstall -q -y faiss-cpu >/dev/null 2>&1 || true
    "$PYTHON" -m pip install -q "$wheels"/faiss_gpu-*.whl >&2 || echo "gpu_check: faiss-gpu did not install" >&2
  else
    echo "gpu_check: faiss-gpu not reachable; using the installed FAISS" >&2
  fi
  "$PYTHON" -m pip install -q -e . >&2 || echo "gpu_check: the project did not install; using what is there" >&2
  rm -rf "$wheels"
fi
exec "$PYTHON" bench/gpu_check.py "$@"
