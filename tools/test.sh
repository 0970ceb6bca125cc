#!/usr/bin/env bash
# Configures, builds and runs every test. The README's test command; .ci/run runs it too.
#   bash tools/test.sh            (build folder: ./build, or $PATHLINE_BUILD_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh >/dev/null
build="${PATHLINE_BUILD_DIR:-build}"
jobs="$(nproc)"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
