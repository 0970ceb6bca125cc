# Sourced by tools/test.sh and tools/quickstart.sh: pathline_configure BUILD_DIR [cmake args...]
# configures the build folder quietly, printing Pathline's own summary lines (which LibTorch, with
# CUDA, Gloo and NCCL or not) and, when configuring fails, everything CMake said.
pathline_configure() {
  local build=$1
  shift
  mkdir -p "$build"
  if ! cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >"$build/configure.log" 2>&1; then
    cat "$build/configure.log" >&2
    echo "configure failed (log: $build/configure.log)" >&2
    return 1
  fi
  grep -E '^-- Pathline:' "$build/configure.log" | sed 's/^-- //' || true
}
