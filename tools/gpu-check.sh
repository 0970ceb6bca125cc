#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step functions run through run_step "$@", which it cannot follow
# gpu-check.sh: Pathline on a CUDA GPU machine, end to end, in one command (meant to take under 8
# minutes on an H100 machine with 16 cores, most of it the build; not yet timed there). It builds Pathline against that machine's own PyTorch (the LibTorch
# inside its pip torch, found through `$PYTHON -c 'import torch.utils; ...cmake_prefix_path'`), runs
# the CUDA tests (`ctest -L cuda`) and a few fast CPU ones, trains and samples configs/quickstart.toml
# on the GPU, times `pathline bench train` of the U-Net and DiT Fashion-MNIST configs in bfloat16,
# and writes a report with every number.
#
# Such a machine has no internet and no Debian -dev packages, so the build's dependencies travel as
# Debian .deb files (bookworm's, what this project builds with), downloaded beforehand:
#
#   bash tools/gpu-check.sh --prepare DIR     (here, with internet; DIR is git-ignored: .gpu-deps)
#       apt-get download (no root needed) of Boost's headers and program_options, toml++,
#       nlohmann-json, stb, GoogleTest, zlib's headers, pkgconf, and Debian's dataset-fashion-mnist
#       (the image benchmarks read it): about 44 MB. Not cairo: its development files want a dozen
#       more -dev packages and fonts, so this build leaves the charts out (-DPATHLINE_CHARTS=OFF).
#
#   bash tools/gpu-check.sh [--deps DIR] OUT  (on the GPU machine)
#       Unpacks DIR's .debs with `dpkg -x` into a private folder of the build folder (never into /),
#       points CMake, pkg-config and the loader at it, and runs these steps, each under a heading
#       in OUT/gpu-check.log:
#         environment   tools, Python, torch, the GPU
#         dependencies  the .debs unpacked (once per build folder)
#         configure     -DTorch_DIR from $PYTHON, -DPATHLINE_CHARTS=OFF, the unpacked folder first
#         build         everything, tests included; then counts headers read from /usr/include
#         tests-cuda    ctest -L cuda (the suite Cuda, tests/test_cuda.cpp)
#         tests-cpu     a few fast CPU suites (config, checkpoints' files, plugin host, paths, ...)
#                       with CUDA_VISIBLE_DEVICES='' so that they test the CPU path they were made for
#         quickstart    pathline run configs/quickstart.toml --set run.device=cuda, timed
#         bench         pathline bench train of configs/fmnist-unet.toml and fmnist-dit.toml on the
#                       GPU (bfloat16, as shipped) at batch 128 (100 steps) and 1024 (30 steps)
#       A failing step among the first four stops the check; a failing test, run or benchmark is
#       recorded and the next step still runs. It exits 1 naming the failed steps, 0 otherwise.
#
# Through this workplace's device tool (it sends the repository's tree, and .gpu-deps only when
# carried, as it is git-ignored):
#   here:      bash tools/gpu-check.sh --prepare .gpu-deps
#   device:    run(command="bash tools/gpu-check.sh --deps .gpu-deps $OUT", carry=[".gpu-deps"],
#                  timeout_s=600)
# What comes back in OUT (the tool returns at most 8 files):
#   gpu-check.md              the report: machine, GPU, PyTorch, build time, test counts, the
#                             quickstart's time, energy distance and NLL, each benchmark's steps/s,
#                             samples/s, GFLOP/s and GPU memory
#   gpu-check.json            the same numbers, for scripts
#   gpu-check.log             every step's output
#   quickstart-summary.json   the quickstart run's summary.json
#   tests-cuda.xml            ctest's JUnit record of the CUDA tests
#
# Environment:
#   PYTHON            the Python whose torch to build against (default python3; on the GPU image
#                     python3 is /opt/torch/.venv/bin/python3)
#   GPU_CHECK_QUICK=1 a smoke run for a machine without a GPU: device "auto", a few training steps,
#                     small benchmarks (checks the script, measures nothing)
#   GPU_CHECK_BUILD   the build folder (default build-gpu-check, git-ignored)
#   CXX               the C++ compiler (default: c++, else g++, else clang++)
#   JOBS              compile jobs (default: every core)
set -euo pipefail

usage() {
  sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ------------------------------------------------------------------------------------------------
# --prepare DIR: the .debs, here.

# Boost: headers (Boost.DLL, and what program_options' headers need) and program_options' library;
# toml++ (Debian builds it as a library); GoogleTest's headers and static libraries; stb (a library
# in Debian); zlib's headers (zlib1g for the file its libz.so link names); pkgconf for machines
# without pkg-config; the Fashion-MNIST idx files.
debs=(libboost1.74-dev libboost-program-options1.74-dev libboost-program-options1.74.0
  libtomlplusplus-dev libtomlplusplus3 nlohmann-json3-dev libgtest-dev libstb-dev libstb0
  zlib1g-dev zlib1g pkgconf-bin libpkgconf3 dataset-fashion-mnist)

prepare() {
  local dir=$1
  command -v apt-get >/dev/null || { echo "gpu-check --prepare: needs apt-get (Debian bookworm)" >&2; exit 2; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  rm -f "$dir"/*.deb
  echo "gpu-check --prepare: downloading ${#debs[@]} packages into $dir"
  (cd "$dir" && apt-get download "${debs[@]}")
  local total files=("$dir"/*.deb)
  total=$(cat "${files[@]}" | wc -c)
  stat -c '%s %n' "$dir"/*.deb | awk '{ n = split($2, p, "/"); printf "  %-72s %6.2f MB\n", p[n], $1 / 1e6 }'
  echo "gpu-check --prepare: ${#files[@]} files, $(awk -v t="$total" 'BEGIN { printf "%.1f", t / 1e6 }') MB in all"
  if ((total > 60 * 1024 * 1024)); then
    echo "gpu-check --prepare: over 60 MiB; the device tool carries at most 64 MiB with the tree" >&2
    exit 1
  fi
  if ! git -C "$repo" check-ignore -q "$dir/x.deb" 2>/dev/null; then
    echo "gpu-check --prepare: warning: $dir is not git-ignored; the .debs must never be committed" >&2
  fi
}

# ------------------------------------------------------------------------------------------------
# The check.

deps=""
out=""
while (($#)); do
  case $1 in
    -h | --help) usage 0 ;;
    --prepare)
      [[ $# -ge 2 ]] || usage 2
      prepare "$2"
      exit 0
      ;;
    --deps)
      [[ $# -ge 2 ]] || usage 2
      deps=$2
      shift 2
      ;;
    -*)
      echo "gpu-check: unknown option $1 (see --help)" >&2
      exit 2
      ;;
    *)
      out=$1
      shift
      ;;
  esac
done
[[ -n $out ]] || usage 2

python=${PYTHON:-python3}
quick=${GPU_CHECK_QUICK:-0}
build=${GPU_CHECK_BUILD:-$repo/build-gpu-check}
jobs=${JOBS:-$(nproc)}
mkdir -p "$out" "$build"
out=$(cd "$out" && pwd)
build=$(cd "$build" && pwd)
work=$build/gpu-check
rm -rf "$work"
mkdir -p "$work/steps"
log=$out/gpu-check.log
: >"$log"
cd "$repo"

failed=()
# Each step's numbers go to $work/steps/NAME.json (read by the report); its output to the log.
note() { echo "$*" | tee -a "$log"; }
heading() {
  note ""
  note "=== gpu-check: $1 ($(date -u +%H:%M:%S)) ==="
}
record() { # record STEP KEY=VALUE...: a JSON object of numbers and strings for the report
  local step=$1
  shift
  "$python" - "$work/steps/$step.json" "$@" <<'EOF'
import json, os, sys
path, pairs = sys.argv[1], sys.argv[2:]
data = json.load(open(path)) if os.path.exists(path) else {}
for pair in pairs:
    key, _, value = pair.partition("=")
    try:
        data[key] = json.loads(value)
    except ValueError:
        data[key] = value
json.dump(data, open(path, "w"), indent=1)
EOF
}
# Runs step function $2 as step $1 in a subshell that stops at its first failing command, its
# output into the log; records its status and seconds, and leaves the status in $step_status.
# (Never call it from `if`, `&&` or `||`: bash would ignore `set -e` inside it, subshell included.)
run_step() {
  local name=$1 start=$SECONDS
  shift
  heading "$name"
  set +e
  (
    set -e
    "$@"
  ) 2>&1 | tee -a "$log"
  step_status=${PIPESTATUS[0]}
  set -e
  if ((step_status == 0)); then
    record "$name" status='"ok"' seconds=$((SECONDS - start)) || true
  else
    failed+=("$name")
    record "$name" status='"failed"' exit="$step_status" seconds=$((SECONDS - start)) || true
    note "gpu-check: step '$name' failed (exit $step_status)"
  fi
  write_report >/dev/null 2>&1 || true
}
# A step whose failure stops the check (environment, dependencies, configure, build).
must() {
  run_step "$@"
  ((step_status == 0)) || finish
}
# A step whose failure is recorded while the check goes on (tests, runs, benchmarks).
try() { run_step "$@"; }

# The C++ compiler ($CXX, else c++, g++ or clang++) and the build tool (ninja, else make).
cxx=${CXX:-$(command -v c++ || command -v g++ || command -v clang++ || echo c++)}
export CXX=$cxx
generator=Ninja
if ! command -v ninja >/dev/null; then generator="Unix Makefiles"; fi

# LibTorch's CMake package looks for the CUDA toolkit's nvcc.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH=/usr/local/cuda/bin:$PATH; fi

# ---- environment: the tools, the Python, its torch, the GPU.
step_environment() {
  local tool
  for tool in cmake "$python" "$cxx"; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (a C++ compiler: set CXX)"; return 1; }
  done
  echo "cmake: $(cmake --version | head -1); generator: $generator; C++: $("$cxx" --version | head -1)"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  fi
  "$python" - "$work/steps/environment.json" <<'EOF'
import json, os, platform, sys
import torch, torch.utils
info = {"python": sys.executable, "python_version": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "torch_cmake": torch.utils.cmake_prefix_path,
        "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count(),
        "cpu_cores": os.cpu_count(), "machine": platform.platform()}
if info["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                gpu_multiprocessors=p.multi_processor_count)
print(json.dumps(info, indent=1))
json.dump(info, open(sys.argv[1], "w"), indent=1)
EOF
}

# ---- dependencies: the .debs unpacked into a private folder, made to work from there.
root=$build/deps
step_dependencies() {
  if [[ -z $deps ]]; then
    echo "no --deps folder: using the machine's own packages"
    return 0
  fi
  local deps_dir
  deps_dir=$(cd "$deps" && pwd)
  compgen -G "$deps_dir/*.deb" >/dev/null || { echo "$deps_dir holds no .deb (run --prepare first)"; return 1; }
  # Unpacked already (a second check on the same machine): the same files, left as they are.
  local signature
  signature=$(stat -c '%n %s' "$deps_dir"/*.deb)
  if [[ -f $root/.unpacked && $(cat "$root/.unpacked") == "$signature" ]]; then
    echo "already unpacked in $root"
    return 0
  fi
  rm -rf "$root"
  mkdir -p "$root"
  local deb
  for deb in "$deps_dir"/*.deb; do
    if command -v dpkg >/dev/null; then
      dpkg -x "$deb" "$root"
    else # ar and tar: what dpkg -x does
      (mkdir -p "$root/.ar" && cd "$root/.ar" && ar x "$deb" && tar -xf data.tar.* -C "$root" && rm -rf "$root/.ar")
    fi
    echo "unpacked $(basename "$deb")"
  done
  # Links to absolute paths (zlib1g-dev's libz.so -> /lib/...) point into the private folder.
  local link target
  while IFS= read -r link; do
    target=$(readlink "$link")
    if [[ $target == /* && -e $root$target ]]; then ln -sfn "$root$target" "$link"; fi
  done < <(find "$root" -type l)
  # pkg-config files name /usr: their prefixes become the private folder's.
  find "$root" -name '*.pc' -exec sed -i -E "s#^([A-Za-z_]+)=/usr#\\1=$root/usr#" {} +
  du -sh "$root"
  echo "$signature" >"$root/.unpacked"
}

# ---- configure and build: against $PYTHON's LibTorch, the private folder first.
step_configure() {
  local torch_prefix
  torch_prefix=$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
  # PATHLINE_PYTHON: the tests' Python where the checkout has no .venv (the GPU machine's).
  local args=(-S "$repo" -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release
    -DPATHLINE_CHARTS=OFF "-DTorch_DIR=$torch_prefix/Torch" "-DPATHLINE_PYTHON=$(command -v "$python")")
  if [[ -n $deps ]]; then
    args+=("-DCMAKE_PREFIX_PATH=$root/usr;$root")
    # pkg-config: the machine's, else the one unpacked; either sees only the unpacked .pc files.
    if ! command -v pkg-config >/dev/null; then args+=("-DPKG_CONFIG_EXECUTABLE=$root/usr/bin/pkgconf"); fi
  fi
  echo "cmake ${args[*]}"
  cmake "${args[@]}"
  # Where each dependency was found (inside $root when --deps is given).
  grep -E '^(Boost_DIR|boost_program_options_DIR|tomlplusplus_DIR|nlohmann_json_DIR|GTest_DIR|ZLIB_INCLUDE_DIR|ZLIB_LIBRARY_RELEASE|Torch_DIR|PKG_CONFIG_EXECUTABLE):' \
    "$build/CMakeCache.txt" || true
  grep -E '^STB_INCLUDE_DIRS' "$build/CMakeCache.txt" || true
}

step_build() {
  cmake --build "$build" -j "$jobs"
  # Every dependency header came from the private folder, none from the machine's /usr/include.
  if [[ -n $deps && $generator == Ninja ]]; then
    local strays
    strays=$(ninja -C "$build" -t deps 2>/dev/null | grep -cE '^ +/usr/include/(boost|toml\+\+|nlohmann|gtest|stb|zlib\.h)' || true)
    echo "dependency headers read from /usr/include instead of $root: $strays"
    record build stray_headers="$strays"
  fi
}

# ---- tests: the CUDA suite; a few fast CPU suites with the GPUs hidden (the CPU path as designed).
step_tests_cuda() {
  local status=0
  ctest --test-dir "$build" -L cuda --output-on-failure --timeout 600 --output-junit "$out/tests-cuda.xml" \
    | tee "$work/tests-cuda.txt" || status=$?
  count_tests tests-cuda "$work/tests-cuda.txt"
  return "$status"
}
step_tests_cpu() {
  local status=0
  CUDA_VISIBLE_DEVICES='' ctest --test-dir "$build" -LE cuda -j "$jobs" --output-on-failure --timeout 300 \
    -R '^(Config|ConfigOverrides|ConfigSlots|CheckpointFile|PluginHost|Registry|SafetensorsTest|TheoryPaths|FashionMnistCorrupt|TrainStep)\.' | tee "$work/tests-cpu.txt" || status=$?
  count_tests tests-cpu "$work/tests-cpu.txt"
  return "$status"
}
count_tests() { # the tests run, passed, skipped and failed, from ctest's progress lines
  local lines=$work/$1-progress.txt passed skipped failed total
  grep -E '^ *[0-9]+/[0-9]+ Test +#' "$2" >"$lines" || true
  total=$(wc -l <"$lines")
  passed=$(grep -c ' Passed ' "$lines" || true)
  skipped=$(grep -c '\*\*\*Skipped' "$lines" || true)
  failed=$((total - passed - skipped)) # Failed, Exception, Timeout, Not Run
  echo "tests: $total run, $passed passed, $skipped skipped, $failed failed"
  record "$1" total="$total" passed="$passed" skipped="$skipped" failed="$failed"
}

# ---- the quickstart, trained and sampled on the GPU.
pathline=$build/bin/pathline
device=cuda
if [[ $quick == 1 ]]; then device=auto; fi
step_quickstart() {
  local settings=(--set "run.device=$device")
  if [[ $quick == 1 ]]; then
    settings+=(--set train.steps=200 --set sample.n=2000 --set 'metric[1].n=200')
  fi
  local start=$EPOCHREALTIME end
  "$pathline" run configs/quickstart.toml --run-dir "$work/quickstart" "${settings[@]}"
  end=$EPOCHREALTIME
  cp "$work/quickstart/summary.json" "$out/quickstart-summary.json"
  record quickstart wall_seconds="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')" \
    settings="\"${settings[*]}\""
}

# ---- pathline bench train: the U-Net and DiT configs as shipped (bfloat16), on the GPU.
fmnist=${root}/usr/share/datasets/fashion-mnist
[[ -d $fmnist ]] || fmnist=/usr/share/datasets/fashion-mnist
step_bench() {
  local model size batch steps warmup
  local sizes=("128 100 10" "1024 30 5") # batch, timed steps, warm-up steps
  local extra=()
  if [[ $quick == 1 ]]; then
    sizes=("16 2 1")
    extra=(--set dataset.limit=512)
  fi
  for model in unet dit; do
    for size in "${sizes[@]}"; do
      read -r batch steps warmup <<<"$size"
      echo "bench train configs/fmnist-$model.toml: batch $batch, $steps steps after $warmup"
      "$pathline" bench train "configs/fmnist-$model.toml" --steps "$steps" --warmup "$warmup" \
        --set "run.device=$device" --set "dataset.root=$fmnist" --set "train.batch_size=$batch" \
        "${extra[@]}" >"$work/bench-line.json"
      # One JSON object a line, the config's name first.
      sed "s#^{#{\"config\": \"fmnist-$model\", #" "$work/bench-line.json" | tee -a "$work/bench.jsonl"
    done
  done
}

# ---- the report: every number, as markdown and JSON.
# Written after every step, so that a check stopped by a time limit still leaves the steps it did
# (what the device tool brings back from OUT then); printed by finish.
write_report() {
  "$python" - "$work" "$out" "$quick" "${failed[@]}" <<'EOF'
import json, os, sys
work, out, quick, failed = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
order = ["environment", "dependencies", "configure", "build", "tests-cuda", "tests-cpu", "quickstart", "bench"]
steps = {}
for name in sorted(os.listdir(os.path.join(work, "steps")), key=lambda n: order.index(n[:-5]) if n[:-5] in order else 99):
    steps[name[:-5]] = json.load(open(os.path.join(work, "steps", name)))
bench = []
if os.path.exists(os.path.join(work, "bench.jsonl")):
    bench = [json.loads(line) for line in open(os.path.join(work, "bench.jsonl")) if line.startswith("{")]
summary = {}
if os.path.exists(os.path.join(out, "quickstart-summary.json")):
    summary = json.load(open(os.path.join(out, "quickstart-summary.json")))
report = {"quick": quick, "failed_steps": failed, "steps": steps, "bench_train": bench,
          "quickstart": summary}
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)

env = steps.get("environment", {})
md = ["# gpu-check", ""]
if quick:
    md += ["**Quick mode (GPU_CHECK_QUICK=1): a smoke run of the script; the numbers measure nothing.**", ""]
missing = [name for name in order if name not in steps]
result = ("failed steps: " + ", ".join(failed) if failed else
          "every step passed" if not missing else "ended before: " + ", ".join(missing))
md += [f"- result: {result}",
       f"- machine: {env.get('machine', '?')}, {env.get('cpu_cores', '?')} cores",
       f"- GPU: {env.get('gpu', 'none visible')}" + (f", {env['gpu_memory_gib']} GiB, {env['gpu_multiprocessors']} SMs" if 'gpu' in env else ""),
       f"- PyTorch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}) from {env.get('python', '?')}", ""]
md += ["| step | status | seconds |", "| --- | --- | --- |"]
for name, s in steps.items():
    if "status" in s:
        md.append(f"| {name} | {s['status']} | {s.get('seconds', '')} |")
md.append("")
for name in ("tests-cuda", "tests-cpu"):
    if name in steps and "total" in steps[name]:
        s = steps[name]
        md.append(f"- {name}: {s['total']} run, {s['passed']} passed, {s['skipped']} skipped, {s['failed']} failed")
if "build" in steps and "stray_headers" in steps["build"]:
    md.append(f"- dependency headers read from /usr/include instead of the .debs: {steps['build']['stray_headers']}")
md.append("")
if summary:
    q = steps.get("quickstart", {})
    m = summary.get("metrics", {})
    t = summary.get("train", {})
    md += ["## Quickstart (configs/quickstart.toml)", "",
           f"- device {summary.get('platform', {}).get('device')}, {q.get('settings', '')}",
           f"- wall time {q.get('wall_seconds', float('nan')):.1f} s (training {t.get('seconds', float('nan')):.1f} s, "
           f"{t.get('steps')} steps, {t.get('samples_per_second', float('nan')):.0f} samples/s)",
           f"- energy distance {m.get('energy_distance')}", f"- NLL {m.get('nll')} nats", ""]
if bench:
    md += ["## pathline bench train (bfloat16)", "",
           "| config | device | batch | steps/s | samples/s | GFLOP/s | GPU peak MiB | last loss |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in bench:
        md.append(f"| {b['config']} | {b.get('device')} | {b['batch_size']} | {b['steps_per_s']:.2f} | "
                  f"{b['samples_per_s']:.0f} | {b['gflops']:.1f} | "
                  f"{'%.0f' % b['gpu_peak_mb'] if 'gpu_peak_mb' in b else '-'} | {b['last_loss']:.4f} |")
    md.append("")
open(os.path.join(out, "gpu-check.md"), "w").write("\n".join(md) + "\n")
EOF
}

finish() {
  heading report
  if write_report 2>&1 | tee -a "$log"; then
    tee -a "$log" <"$out/gpu-check.md"
  else
    note "gpu-check: the report could not be written (see above)"
  fi
  if ((${#failed[@]})); then
    note "gpu-check: FAILED: step(s) ${failed[*]} (see $log)"
    exit 1
  fi
  note "gpu-check: every step passed; report in $out/gpu-check.md"
  exit 0
}

must environment step_environment
must dependencies step_dependencies
if [[ -n $deps ]]; then
  # pkg-config reads only the unpacked .pc files; the unpacked libraries load from there (pkgconf's
  # own, and Boost's, toml++'s and stb's for the programs built).
  export PKG_CONFIG_LIBDIR=$root/usr/lib/x86_64-linux-gnu/pkgconfig:$root/usr/share/pkgconfig
  export PKG_CONFIG_PATH=$PKG_CONFIG_LIBDIR
  export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
must configure step_configure
must build step_build
try tests-cuda step_tests_cuda
try tests-cpu step_tests_cpu
try quickstart step_quickstart
try bench step_bench
finish
