#!/usr/bin/env bash
# Pathline's benchmarks against plain PyTorch, the real peers (Meta's flow_matching, torchcfm) and the
# hardware (tools/bench/run.py; docs/performance.md).
#   bash tools/bench/run.sh [--quick] [--rounds N] [--only 2d-small,2d-recipe,...] [--out DIR]
# Everything runs on the project's pinned torch: Pathline links the LibTorch of the torch in .venv
# (PATHLINE_VENV), and that environment's Python runs the peers. Installs them (tools/install-deps.sh)
# when they are missing, and builds Pathline first if needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PATHLINE_VENV:-.venv}/bin/python"
if ! "$python" -c "import torch, flow_matching, torchcfm, torchdiffeq, ot" 2>/dev/null; then
  bash tools/install-deps.sh >/dev/null
fi
build="${PATHLINE_BUILD_DIR:-build}"
if [ ! -x "$build/bin/pathline" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target pathline >/dev/null
exec "$python" tools/bench/run.py --pathline "$build/bin/pathline" --python "$python" "$@"
