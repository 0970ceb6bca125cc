#!/usr/bin/env bash
# Pathline's benchmarks against plain PyTorch and the hardware (tools/bench/run.py; docs/performance.md).
#   bash tools/bench/run.sh [--quick] [--rounds N] [--only 2d-small,2d-recipe,...] [--out DIR]
# Builds Pathline first if needed; needs Debian's python3-torch (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/install-deps.sh >/dev/null
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-torch >/dev/null
fi
build="${PATHLINE_BUILD_DIR:-build}"
if [ ! -x "$build/bin/pathline" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target pathline >/dev/null
exec /usr/bin/python3 tools/bench/run.py --pathline "$build/bin/pathline" "$@"
