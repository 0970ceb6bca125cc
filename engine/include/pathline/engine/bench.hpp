// `pathline bench`: the engine's side of the benchmarks in tools/bench/ (run.py puts it beside plain
// PyTorch scripts). Each measurement is one JSON object.
#pragma once

#include <string>

#include "pathline/engine/build.hpp"

namespace pathline {

struct BenchOptions {
  std::int64_t warmup = 10;  // untimed steps (train) or draws (sample) first
  std::int64_t steps = 100;  // timed training steps
  std::int64_t repeats = 3;  // timed draws of [sample] n samples (sample), products (peak)
};

// Trains the pipeline's model for warmup + steps steps with the engine's training step (no files
// written) and times the last `steps`: {"steps_per_s", "samples_per_s", "gflops", "macs_per_sample",
// "parameters", "first_loss", "last_loss", "peak_mb", "threads", "blas", "fused_optimizer", ...}.
PATHLINE_API std::string bench_train(const PipelineConfig& config, const Registry& registry,
                                     const BenchOptions& options);
// Draws [sample] n samples `repeats` times with the configured solver and times them (untrained
// weights: the cost does not depend on them): {"samples_per_s", "nfe", "gflops", "seconds", ...}.
PATHLINE_API std::string bench_sample(const PipelineConfig& config, const Registry& registry,
                                      const BenchOptions& options);
// The matrix-product rate of `threads` threads (0: every core) on size x size matrices of `dtype`
// (float32 or bfloat16), the best of `repeats`: {"gflops", "size", "dtype", "threads", "blas" (the
// OpenBLAS kernels, empty for another BLAS), "torch" (LibTorch's version), "torch_config" (LibTorch's
// build summary, at::show_config())}.
PATHLINE_API std::string bench_peak(std::int64_t size, int threads, torch::ScalarType dtype,
                                    const BenchOptions& options);

}  // namespace pathline
