#!/usr/bin/env bash
# Configures, builds and runs every test. The README's test command; .ci/run runs it too.
#   bash tools/test.sh            (build folder: ./build, or $PATHLINE_BUILD_DIR)
#   bash tools/test.sh --fast     (leaves out the tests labelled slow: the long end-to-end runs)
#   bash tools/test.sh -- ARGS    (passes ARGS to ctest, e.g. -- -R Solvers)
# Tests are always switched on here, whatever an earlier configure chose, and a run in which no
# test ran is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ctest_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --fast) ctest_args+=(-LE slow) ;;
    --) shift; ctest_args+=("$@"); break ;;
    *) echo "tools/test.sh: unknown option '$1' (--fast, or -- followed by ctest's arguments)" >&2; exit 2 ;;
  esac
  shift
done
bash tools/install-deps.sh >/dev/null
build="${PATHLINE_BUILD_DIR:-build}"
jobs="$(nproc)"
source tools/configure.sh
pathline_configure "$build" -DPATHLINE_BUILD_TESTS=ON ${PATHLINE_CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure --no-tests=error -j "$jobs" ${ctest_args[@]+"${ctest_args[@]}"}
