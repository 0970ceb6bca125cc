#!/usr/bin/env bash
# End to end, as a plugin author would: install Pathline into a temporary prefix, build the
# out-of-tree example (sdk/examples/custom-plugin) against that prefix alone and run a pipeline that
# uses its components; build the three plugins of sdk/GUIDE.md (a data set, a model, a solver),
# taken from the guide's text alone, and run the guide's pipeline; and check that a plugin built for
# the previous SDK ABI version is refused by name and version while the built-in plugins still load.
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
# expect_json FILE EXPRESSION WHAT: the Python EXPRESSION, with `s` the JSON of FILE, is true.
expect_json() {
  python3 -c 'import json, math, sys; s = json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' \
    "$1" "$2" || { cat "$1"; fail "$3 ($2)"; }
}

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
  "$libdir/cmake/PathlineSDK/PathlinePlugin.cmake" "$libdir/cmake/PathlineSDK/PathlineSDKTargets.cmake" \
  "$libdir/cmake/PathlineSDK/PathlineTorch.cmake"; do
  [[ -f $f ]] || fail "not installed: $f"
done

# The installed tree must not point back into the build or source tree, except where LibTorch
# itself lives (the package finds it again, the binaries load it): tools/install-deps.sh puts it
# into the source tree's .venv, whose site-packages also hold the CUDA libraries it loads.
torch_dir=$(sed -n 's/^Torch_DIR:[A-Z]*=//p' "$build/CMakeCache.txt")
[[ -d $torch_dir ]] || fail "no Torch_DIR in $build/CMakeCache.txt"
torch_home=$(realpath "$torch_dir/../../../..")
torch_named=${torch_dir%/torch/share/cmake/Torch}  # the same folder as written (.venv may be a link)
outside_torch() { sed -e "s|$torch_home[^;\" :]*||g" -e "s|$torch_named[^;\" :]*||g" | grep -F -e "$build" -e "$source"; }
if grep -rF -e "$build" -e "$source" "$libdir/cmake" "$prefix/include" | outside_torch; then
  fail "installed files name the build or source tree"
fi
for binary in "$pathline" "$engine"; do
  if readelf -d "$binary" | grep -E 'RPATH|RUNPATH' | outside_torch >/dev/null; then
    fail "$binary has a run path into the build or source tree"
  fi
done
resolved=$(ldd "$pathline" | awk '/libpathline_engine\.so/ {print $3}')
[[ -n $resolved && $(realpath "$resolved") == "$engine" ]] ||
  { ldd "$pathline"; fail "the installed pathline does not use the installed engine"; }

# One SDK ABI version everywhere: the command, the installed header and the CMake package.
abi=$("$pathline" --version | sed -n 's/.*(SDK ABI \([0-9]*\),.*/\1/p')
[[ -n $abi ]] || fail "no SDK ABI version in 'pathline --version': $("$pathline" --version)"
header_abi=$(sed -n 's/^#define PATHLINE_SDK_ABI_VERSION \([0-9]*\)$/\1/p' "$prefix/include/pathline/abi.hpp")
package_abi=$(sed -n 's/^set(PathlineSDK_ABI_VERSION \([0-9]*\))$/\1/p' "$libdir/cmake/PathlineSDK/PathlineSDKConfig.cmake")
[[ $header_abi == "$abi" && $package_abi == "$abi" ]] ||
  fail "SDK ABI versions differ: pathline --version $abi, abi.hpp '$header_abi', PathlineSDKConfig.cmake '$package_abi'"

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
for f in config.toml summary.json metrics.csv model.safetensors samples.npy samples.png; do
  [[ -s $work/run/$f ]] || fail "run directory lacks $f"
done
expect_in "$work/run/config.toml" 'type = "example_power"'
# The path that draws its own x_t trains and samples too; with a noise parameterization it is refused.
"$pathline" run "$work/pipe.toml" --plugin-dir "$work/example" --run-dir "$work/bridge" \
  --set path.type=example_bridge --set solver.type=midpoint >/dev/null 2>"$work/bridge.err" ||
  { cat "$work/bridge.err"; fail "pathline run with example_bridge"; }
[[ -s $work/bridge/samples.npy ]] || fail "the example_bridge run wrote no samples"
if "$pathline" validate "$work/pipe.toml" --plugin-dir "$work/example" --set path.type=example_bridge \
  --set parameterization.type=noise 2>"$work/bridge-noise.err"; then
  fail "example_bridge with a noise parameterization was accepted"
fi
expect_in "$work/bridge-noise.err" "path 'example_bridge' is not affine"
# A FixedStepSolver on the engine's grid: 8 steps of 2 evaluations.
expect_json "$work/run/summary.json" \
  's["sampling"]["solver"] == "example_ralston" and s["sampling"]["time_grid"] == "uniform" and s["sampling"]["n"] == 512 and s["sampling"]["nfe"] == 16' \
  "summary.json: the example's solver, 512 samples, 16 NFE"
expect_json "$work/run/summary.json" 'math.isfinite(s["metrics"]["energy_distance"])' "summary.json: a finite energy distance"

# --- 4. The guide's three plugins, from the text of sdk/GUIDE.md alone ----------------------------
# Every code block introduced by a line "`FILE` ...:" is that file.
step "build the data set, model and solver plugins of sdk/GUIDE.md"
mkdir "$work/guide"
python3 - "$source/sdk/GUIDE.md" "$work/guide" <<'PY' || fail "could not take the plugins out of sdk/GUIDE.md"
import pathlib, re, sys
text = pathlib.Path(sys.argv[1]).read_text()
files = dict(re.findall(r"^`([\w.]+)`[^\n]*:\n\n```\w*\n(.*?)```", text, re.M | re.S))
wanted = ["acme_datasets.cpp", "acme_models.cpp", "acme_solvers.cpp", "acme_autoencoders.cpp", "CMakeLists.txt",
          "pipeline.toml", "autoencoder.toml"]
missing = [f for f in wanted if f not in files]
if missing:
    sys.exit("sdk/GUIDE.md lacks " + ", ".join(missing))
for name in wanted:
    (pathlib.Path(sys.argv[2]) / name).write_text(files[name])
PY
"$cmake_bin" -S "$work/guide" -B "$work/guide-build" "${generator[@]}" "${launcher[@]}" \
  -DCMAKE_PREFIX_PATH="$prefix" >"$work/configure-guide.log" 2>&1 ||
  { cat "$work/configure-guide.log"; fail "configure the guide's plugins"; }
"$cmake_bin" --build "$work/guide-build" -j 2 >"$work/build-guide.log" 2>&1 ||
  { cat "$work/build-guide.log"; fail "build the guide's plugins"; }
if grep -q "warning:" "$work/build-guide.log"; then cat "$work/build-guide.log"; fail "the guide's plugins build with warnings"; fi
"$pathline" plugins --plugin-dir "$work/guide-build" >"$work/guide-plugins.txt" 2>&1 || fail "pathline plugins (guide)"
expect_not_in "$work/guide-plugins.txt" "Failed to load"
for component in acme_ring acme_mlp acme_rk3 acme_linear; do expect_in "$work/guide-plugins.txt" "  $component "; done
# The guide's pipeline as written: a labelled data set, a conditional model, guided sampling.
"$pathline" run "$work/guide/pipeline.toml" --plugin-dir "$work/guide-build" --run-dir "$work/guide-run" \
  >"$work/guide-run.out" 2>"$work/guide-run.err" || { cat "$work/guide-run.err"; fail "pathline run (guide)"; }
expect_json "$work/guide-run/summary.json" \
  's["sampling"]["solver"] == "acme_rk3" and s["sampling"]["nfe"] == 24 and s["sampling"]["guidance_scale"] == 1.5' \
  "summary.json: the guide's solver, 8 steps of 3 evaluations, guidance 1.5"
expect_json "$work/guide-run/summary.json" 'math.isfinite(s["metrics"]["energy_distance"])' "summary.json (guide): a finite energy distance"
# The guide's autoencoder: trained by its pipeline without [model], then the guide's pipeline on its
# latents, as the guide says.
"$pathline" run "$work/guide/autoencoder.toml" --plugin-dir "$work/guide-build" --run-dir "$work/guide-ae" \
  >"$work/guide-ae.out" 2>"$work/guide-ae.err" || { cat "$work/guide-ae.err"; fail "pathline run (the guide's autoencoder)"; }
expect_json "$work/guide-ae/summary.json" 's["autoencoder"]["latent_shape"] == [2] and s["autoencoder"]["reconstruction_mse"] < 0.01' \
  "summary.json (guide autoencoder): latent [2], reconstructions within 0.01"
"$pathline" run "$work/guide/pipeline.toml" --plugin-dir "$work/guide-build" --run-dir "$work/guide-latent" \
  --set autoencoder.type=acme_linear --set autoencoder.run="$work/guide-ae" \
  >"$work/guide-latent.out" 2>"$work/guide-latent.err" || { cat "$work/guide-latent.err"; fail "pathline run (guide, on latents)"; }
expect_json "$work/guide-latent/summary.json" 'math.isfinite(s["metrics"]["energy_distance"]) and s["metrics"]["energy_distance"] < 0.05' \
  "summary.json (guide, on latents): energy distance below 0.05"
grep -q 'run = "'"$work/guide-ae"'"' "$work/guide-latent/config.toml" || fail "the latent run's config.toml does not name the autoencoder run"

# Labels cross the plugin boundary: samples asked for the upper half (class 0) land above the x axis,
# those asked for the lower half (class 1) below.
python3 - "$work/guide-run" <<'PY' || fail "the guide's conditional model does not put samples in their class's half"
import ast, struct, sys

def load_npy(path):  # the .npy files the engine writes: version 1, C order, little endian
    data = open(path, "rb").read()
    assert data[:8] == b"\x93NUMPY\x01\x00", f"{path}: not a version 1.0 .npy file"
    length = struct.unpack("<H", data[8:10])[0]
    header = ast.literal_eval(data[10 : 10 + length].decode("latin1"))
    code = {"<f4": "f", "<i8": "q"}[header["descr"]]
    body = data[10 + length :]
    return struct.unpack(f"<{len(body) // struct.calcsize(code)}{code}", body), header["shape"]

x, x_shape = load_npy(sys.argv[1] + "/samples.npy")
labels, labels_shape = load_npy(sys.argv[1] + "/labels.npy")
n = labels_shape[0]
assert x_shape == (n, 2), f"samples {x_shape}, labels {labels_shape}"
assert set(labels) == {0, 1}, f"labels asked for: {sorted(set(labels))}"
right = sum((x[2 * i + 1] < 0) == (labels[i] == 1) for i in range(n)) / n
print(f"guide: {right:.3f} of the samples in their class's half")
sys.exit(0 if right > 0.9 else 1)
PY

# --- 5. A plugin from another SDK ABI version is refused; everything else loads ------------------
# The previous version: a plugin nobody rebuilt.
other=$((abi > 1 ? abi - 1 : abi + 1))
step "build the example for SDK ABI $other"
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
