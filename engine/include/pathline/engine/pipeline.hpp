// Training, sampling and evaluation, driven by a validated PipelineConfig.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "pathline/engine/config.hpp"

namespace pathline {

// Progress and result lines go here (the CLI prints them to stderr).
using Logger = std::function<void(const std::string&)>;

// Every component of a pipeline, built from its config.
struct Components {
  std::shared_ptr<Dataset> dataset;
  std::shared_ptr<Path> path;
  std::shared_ptr<Coupling> coupling;
  std::shared_ptr<TimeSampler> time_sampler;
  std::shared_ptr<Parameterization> parameterization;
  std::shared_ptr<Model> model;
  std::shared_ptr<Solver> solver;
  std::vector<std::pair<std::string, std::shared_ptr<Metric>>> metrics;
  BuildContext context;
};

PATHLINE_API Components build_components(const PipelineConfig& config, const Registry& registry);

// Sets LibTorch's intra-op threads from [run] threads (0: every core).
PATHLINE_API void apply_thread_setting(const PipelineConfig& config);

struct TrainResult {
  std::int64_t steps = 0;
  double final_loss = 0.0;  // mean loss over the last logging window
  double seconds = 0.0;
  std::vector<double> losses;  // one per logged window, as in metrics.csv
};

// Trains components.model in place, writing metrics.csv into run_dir if it is not empty.
PATHLINE_API TrainResult train(const PipelineConfig& config, Components& components,
                               const std::filesystem::path& run_dir, const Logger& log);

struct SampleResult {
  torch::Tensor samples;       // [n, *data_shape]
  torch::Tensor trajectories;  // [steps + 1, K, *data_shape], or undefined
  std::int64_t nfe = 0;        // velocity evaluations per sample batch
  double seconds = 0.0;
};

PATHLINE_API SampleResult sample(const PipelineConfig& config, Components& components);

// Evaluates every configured metric against fresh data; name -> value.
PATHLINE_API std::map<std::string, double> evaluate(const PipelineConfig& config, Components& components,
                                                    const torch::Tensor& samples);

// Run directories. A new run gets <run.dir>/<run.name>, or <name>-2, -3, ... when that exists,
// unless `overwrite` is set (then the existing directory is emptied first) or `explicit_dir` is
// given (it must not exist or be empty unless `overwrite`).
PATHLINE_API std::filesystem::path create_run_dir(const PipelineConfig& config,
                                                  const std::optional<std::filesystem::path>& explicit_dir,
                                                  bool overwrite);

// Weights: save the model (after training) and load them back into a freshly built model.
PATHLINE_API void save_weights(Model& model, const std::filesystem::path& file);
PATHLINE_API void load_weights(Model& model, const std::filesystem::path& file);

// The whole job: `pathline run` (train, sample, evaluate) and `pathline train` (train only).
struct JobOptions {
  std::optional<std::filesystem::path> run_dir;
  bool overwrite = false;
  bool do_sample = true;
};
PATHLINE_API std::filesystem::path run_job(const PipelineConfig& config, const Registry& registry,
                                           const JobOptions& options, const Logger& log);

// `pathline sample RUN_DIR`: rebuilds the run's pipeline from its config.toml (with overrides),
// loads its weights, samples and evaluates into out_dir (default: a new RUN_DIR/sample-<solver>).
PATHLINE_API std::filesystem::path sample_job(const std::filesystem::path& run_dir, const Registry& registry,
                                              const std::vector<std::string>& overrides,
                                              const std::optional<std::filesystem::path>& out_dir,
                                              const Logger& log);

}  // namespace pathline
