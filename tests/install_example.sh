#!/usr/bin/env bash
# End to end, as a plugin author would: install Pathline into a temporary prefix, build the
# out-of-tree example (sdk/examples/custom-plugin) against that prefix alone, run a pipeline that
# uses its components, and check that a plugin built for another SDK ABI version is refused by name
# and version while the built-in plugins still load.
#   tests/install_example.sh CMAKE BUILD_DIR SOURCE_DIR
# Registered with ctest as `install_example` (tests/CMakeLists.txt).
set -euo pipefail
cmake_bin=$1
build=$(realpath "$2")
source=$(realpath "$3")
example=$source/sdk/examples/custom-plugin

work=$(realpath "$(mktemp -d "${TMPDIR:-/tmp}/pathline-install-XXXXXX")")
trap 'rm -rf "$work"' EXIT
unset PATHLINE_PLUGIN_PATH CMAKE_PREFIX_PATH

fail() {
  echo "install_example: FAIL: $*" >&2
  exit 1
}
step() { echo "== [${SECONDS}s] $*"; }
# expect_in FILE TEXT: FILE contains TEXT as a fixed string.
expect_in() { grep -qF -- "$2" "$1" || { cat "$1"; fail "expected '$2' in $1"; }; }
expect_not_in() { ! grep -qF -- "$2" "$1" || { cat "$1"; fail "did not expect '$2' in $1"; }; }
# The plugin lines of `pathline plugins`: from "Plugins:" to the first blank line.
plugin_lines() { awk '/^Plugins:$/ {on = 1; next} on && /^$/ {exit} on' "$1"; }

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
# Speeds up repeated local runs only; the compiler sees the same input either way.
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR=$work CCACHE_NOHASHDIR=1
fi

# --- 1. Install ---------------------------------------------------------------------------------
step "cmake --install $build --prefix $work/prefix"
prefix=$work/prefix
"$cmake_bin" --install "$build" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; fail "install"; }
pathline=$prefix/bin/pathline
engine=$(find "$prefix" -name libpathline_engine.so)
[[ -n $engine ]] || fail "no libpathline_engine.so installed"
libdir=$(dirname "$engine")
for f in "$pathline" "$libdir/pathline/plugins/libpathline_solvers.so" "$libdir/pathline/plugins/libpathline_paths.so" \
  "$prefix/include/pathline/plugin.hpp" "$prefix/include/pathline/engine/host.hpp" \
  "$libdir/cmake/PathlineSDK/PathlineSDKConfig.cmake" "$libdir/cmake/PathlineSDK/PathlineSDKConfigVersion.cmake" \
  "$libdir/cmake/PathlineSDK/PathlinePlugin.cmake" "$libdir/cmake/PathlineSDK/PathlineSDKTargets.cmake"; do
  [[ -f $f ]] || fail "not installed: $f"
done

# The installed tree must not point back into the build or source tree.
if grep -rlF -e "$build" -e "$source" "$libdir/cmake" "$prefix/include"; then fail "installed files name the build or source tree"; fi
for binary in "$pathline" "$engine"; do
  if readelf -d "$binary" | grep -E 'RPATH|RUNPATH' | grep -qF -e "$build" -e "$source"; then
    fail "$binary has a run path into the build or source tree"
  fi
done
resolved=$(ldd "$pathline" | awk '/libpathline_engine\.so/ {print $3}')
[[ -n $resolved && $(realpath "$resolved") == "$engine" ]] ||
  { ldd "$pathline"; fail "the installed pathline does not use the installed engine"; }

# The installed command finds its built-in plugins, next to the installed engine.
"$pathline" plugins >"$work/builtin.txt" 2>"$work/builtin.err" || fail "pathline plugins: $(cat "$work/builtin.err")"
expect_not_in "$work/builtin.txt" "Failed to load"
plugin_lines "$work/builtin.txt" >"$work/builtin-lines.txt"
builtin_count=$(wc -l <"$work/builtin-lines.txt")
((builtin_count >= 5)) || { cat "$work/builtin.txt"; fail "expected the built-in plugins, found $builtin_count"; }
while read -r line; do
  [[ $line == *" built-in "*" $libdir/pathline/plugins/lib"*.so ]] || fail "not an installed built-in: $line"
done <"$work/builtin-lines.txt"

# --- 2. Build the example against the prefix alone -------------------------------------------------
# With no build type, as a user would; it also compiles in about half the time of Release, and
# the example's work happens inside LibTorch anyway.
step "configure and build the example"
mkdir "$work/src"
find "$example" -maxdepth 1 -type f -exec cp {} "$work/src/" \;
"$cmake_bin" -S "$work/src" -B "$work/example" "${generator[@]}" "${launcher[@]}" \
  -DCMAKE_PREFIX_PATH="$prefix" >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; fail "configure the example"; }
expect_in "$work/example/CMakeCache.txt" "PathlineSDK_DIR:PATH=$libdir/cmake/PathlineSDK"
"$cmake_bin" --build "$work/example" -j 2 >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "build the example"; }
if grep -q "warning:" "$work/build.log"; then cat "$work/build.log"; fail "the example builds with warnings"; fi

# --- 3. Use its components ----------------------------------------------------------------------
step "pathline plugins / inspect / validate / run with --plugin-dir"
"$pathline" plugins --plugin-dir "$work/example" >"$work/plugins.txt" 2>&1 || fail "pathline plugins --plugin-dir"
expect_not_in "$work/plugins.txt" "Failed to load"
expect_in "$work/plugins.txt" "--plugin-dir         $work/example/libexample_paths.so"
expect_in "$work/plugins.txt" "--plugin-dir         $work/example/libexample_solvers.so"
expect_in "$work/plugins.txt" "  example_power "
expect_in "$work/plugins.txt" "  example_ralston "
"$pathline" inspect path example_power --plugin-dir "$work/example" >"$work/inspect.txt" || fail "pathline inspect"
expect_in "$work/inspect.txt" "from plugin 'example-paths' 1.0.0 (--plugin-dir: $work/example/libexample_paths.so)"
expect_in "$work/inspect.txt" "default 2.0, range [1, 10]"
# The example's own pipeline stays valid.
"$pathline" validate "$work/src/pipeline.toml" --plugin-dir "$work/example" 2>"$work/validate.err" ||
  { cat "$work/validate.err"; fail "the example's pipeline.toml is invalid"; }

cat >"$work/pipe.toml" <<'TOML'
[dataset]
type = "toy2d"
shape = "moons"

[path]
type = "example_power"
power = 3.0

[model]
type = "mlp"
width = 32
depth = 2

[train]
steps = 60
batch_size = 128

[solver]
type = "example_ralston"
steps = 8

[sample]
n = 512
trajectories = 4

[[metric]]
type = "energy_distance"
TOML
"$pathline" run "$work/pipe.toml" --plugin-dir "$work/example" --run-dir "$work/run" >"$work/run.out" 2>"$work/run.err" ||
  { cat "$work/run.err"; fail "pathline run"; }
[[ $(cat "$work/run.out") == "$work/run" ]] || fail "pathline run printed '$(cat "$work/run.out")', expected $work/run"
for f in config.toml summary.json metrics.csv model.pt samples.npy samples.png; do
  [[ -s $work/run/$f ]] || fail "run directory lacks $f"
done
expect_in "$work/run/config.toml" 'type = "example_power"'
expect_in "$work/run/summary.json" '"solver": "example_ralston", "n": 512, "nfe": 16'
grep -qE '"energy_distance": [0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?[,}]' "$work/run/summary.json" ||
  { cat "$work/run/summary.json"; fail "no finite energy distance in summary.json"; }

# --- 4. A plugin from another SDK ABI version is refused; everything else loads ------------------
step "build the example for another SDK ABI version"
abi=$("$pathline" --version | sed -n 's/.*(SDK ABI \([0-9]*\),.*/\1/p')
[[ -n $abi ]] || fail "no SDK ABI version in 'pathline --version'"
other=$((abi + 1))
"$cmake_bin" -S "$work/src" -B "$work/example-abi" "${generator[@]}" "${launcher[@]}" \
  -DCMAKE_PREFIX_PATH="$prefix" -DEXAMPLE_FAKE_SDK_ABI_VERSION="$other" >"$work/configure-abi.log" 2>&1 ||
  { cat "$work/configure-abi.log"; fail "configure the example for ABI $other"; }
"$cmake_bin" --build "$work/example-abi" --target example_paths >"$work/build-abi.log" 2>&1 ||
  { cat "$work/build-abi.log"; fail "build the example for ABI $other"; }
"$pathline" plugins --plugin-dir "$work/example-abi" >"$work/abi.txt" 2>&1 || fail "pathline plugins with a foreign plugin"
expect_in "$work/abi.txt" "Failed to load:"
expect_in "$work/abi.txt" "  plugin $work/example-abi/libexample_paths.so: stage 'abi-version': expected SDK ABI version $abi, found $other (plugin 'example-paths'); rebuild it against this SDK"
expect_not_in "$work/abi.txt" "example_power"
plugin_lines "$work/abi.txt" | cmp -s - "$work/builtin-lines.txt" ||
  { cat "$work/abi.txt"; fail "the built-in plugins did not all load next to the refused one"; }

step "passed"
