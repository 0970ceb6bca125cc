#include "pathline/engine/bench.hpp"

#include <ATen/Version.h>
#include <sys/resource.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#if defined(PATHLINE_TORCH_HAS_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "pathline/engine/sample.hpp"
#include "pathline/engine/train.hpp"

namespace pathline {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The process's peak resident memory so far, in MiB.
double peak_mb() {
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

// The most GPU memory LibTorch's allocator has handed out on `device` so far, in MiB (0 on the CPU).
double gpu_peak_mb(const torch::Device& device) {
#if defined(PATHLINE_TORCH_HAS_CUDA)
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0);  // [0]: all pools
  }
#endif
  (void)device;
  return 0.0;
}

nlohmann::json common(const char* job) {
  return {{"job", job}, {"threads", at::get_num_threads()}, {"blas", blas_kernel_name()}};
}

// Where a benchmark ran: "cpu" or "cuda:0", and on a GPU the peak of its memory.
nlohmann::json placement(const torch::Device& device) {
  nlohmann::json out = {{"device", device.str()}};
  if (device.is_cuda()) out["gpu_peak_mb"] = gpu_peak_mb(device);
  return out;
}

}  // namespace

std::string bench_train(const PipelineConfig& config, const Registry& registry, const BenchOptions& options) {
  apply_thread_setting(config);
  Components c = build_components(config, registry);
  Trainer trainer(config, c);
  const TrainSettings& tp = config.train;
  std::vector<double> losses;
  for (std::int64_t k = 0; k < options.warmup; ++k) trainer.step();
  const auto start = Clock::now();
  for (std::int64_t k = 0; k < options.steps; ++k) losses.push_back(trainer.step().item<double>());
  const double seconds = seconds_since(start);
  const double steps_per_s = static_cast<double>(options.steps) / seconds;
  const double samples_per_s = steps_per_s * static_cast<double>(tp.batch_size);
  std::int64_t parameters = 0;
  for (const auto& p : c.model->parameters()) parameters += p.numel();
  const double macs = c.model->macs_per_sample();
  auto mean_of_last = [&](std::size_t n) {
    n = std::min(n, losses.size());
    double sum = 0.0;
    for (std::size_t i = losses.size() - n; i < losses.size(); ++i) sum += losses[i];
    return n ? sum / static_cast<double>(n) : 0.0;
  };
  nlohmann::json out = common("train");
  out.update({{"steps", options.steps},
              {"seconds", seconds},
              {"steps_per_s", steps_per_s},
              {"samples_per_s", samples_per_s},
              // A training step costs about three forward passes (forward, and backward's two products).
              {"gflops", 3.0 * 2.0 * macs * samples_per_s / 1e9},
              {"macs_per_sample", macs},
              {"parameters", parameters},
              {"batch_size", tp.batch_size},
              {"precision", tp.precision},
              {"fused_optimizer", trainer.fused()},
              {"first_loss", losses.empty() ? 0.0 : losses.front()},
              {"last_loss", mean_of_last(20)},
              {"peak_mb", peak_mb()}});
  out.update(placement(c.context.device));
  return out.dump();
}

std::string bench_sample(const PipelineConfig& config, const Registry& registry,
                         const BenchOptions& options) {
  apply_thread_setting(config);
  Components c = build_components(config, registry);
  c.model->eval();
  SampleResult result;
  for (std::int64_t k = 0; k < options.warmup; ++k) result = sample(config, c);
  const auto start = Clock::now();
  for (std::int64_t k = 0; k < options.repeats; ++k) result = sample(config, c);
  const double seconds = seconds_since(start);
  const std::int64_t n = config.sample.n;
  const double samples_per_s = static_cast<double>(n * options.repeats) / seconds;
  const double macs = c.model->macs_per_sample();
  nlohmann::json out = common("sample");
  out.update({{"repeats", options.repeats},
              {"seconds", seconds},
              {"samples_per_s", samples_per_s},
              {"n", n},
              {"nfe", result.nfe},
              // Each evaluation is one forward pass per sample.
              {"gflops", 2.0 * macs * static_cast<double>(result.nfe) * samples_per_s / 1e9},
              {"macs_per_sample", macs},
              {"peak_mb", peak_mb()}});
  out.update(placement(c.context.device));
  return out.dump();
}

std::string bench_peak(std::int64_t size, int threads, torch::ScalarType dtype, const BenchOptions& options) {
  at::set_num_threads(threads > 0 ? threads
                                  : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  torch::NoGradGuard no_grad;
  const auto type = torch::TensorOptions().dtype(dtype);
  torch::Tensor a = torch::randn({size, size}, type), b = torch::randn({size, size}, type),
                out = torch::empty({size, size}, type);
  for (std::int64_t k = 0; k < std::max<std::int64_t>(options.warmup, 1); ++k) at::mm_out(out, a, b);
  double best = 0.0;
  for (std::int64_t k = 0; k < std::max<std::int64_t>(options.repeats, 1); ++k) {
    const auto start = Clock::now();
    at::mm_out(out, a, b);
    best = std::max(best, 2.0 * std::pow(static_cast<double>(size), 3) / seconds_since(start) / 1e9);
  }
  nlohmann::json result = common("peak");
  // The build summary (BLAS, oneDNN, CPU capability) says whose kernels gave the rate; it is what
  // torch.__config__.show() prints, so a script can check that it runs the same library.
  result.update({{"gflops", best},
                 {"size", size},
                 {"dtype", dtype == torch::kBFloat16 ? "bfloat16" : "float32"},
                 {"torch", TORCH_VERSION},
                 {"torch_config", at::show_config()},
                 {"peak_mb", peak_mb()}});
  return result.dump();
}

}  // namespace pathline
