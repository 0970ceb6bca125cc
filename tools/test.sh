#!/usr/bin/env bash
# Configures, builds and runs every test. The README's test command; .ci/run runs it too.
#   bash tools/test.sh            (build folder: ./build, or $PATHLINE_BUILD_DIR)
# Tests are always switched on here, whatever an earlier configure chose, and a run in which no
# test ran is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh >/dev/null
build="${PATHLINE_BUILD_DIR:-build}"
jobs="$(nproc)"
source tools/configure.sh
pathline_configure "$build" -DPATHLINE_BUILD_TESTS=ON ${PATHLINE_CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure --no-tests=error -j "$jobs"
