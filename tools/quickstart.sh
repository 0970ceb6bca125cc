#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, run configs/quickstart.toml.
#   bash tools/quickstart.sh [extra pathline run options, e.g. --set train.steps=500]
# It configures the same build folder as tools/test.sh (tests included), so the two commands work
# in either order; it only builds what the main job needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh >/dev/null
build="${PATHLINE_BUILD_DIR:-build}"
source tools/configure.sh
pathline_configure "$build" -DPATHLINE_BUILD_TESTS=ON
# The command line, and the Python module when the configure step could make it (docs/python.md).
targets=(pathline)
grep -q "Python module ON" "$build/configure.log" && targets+=(pathline_python)
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"
"$build/bin/pathline" run configs/quickstart.toml "$@"
