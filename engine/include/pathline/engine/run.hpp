// Run directories and the jobs of the command line: run, train, sample.
#pragma once

#include <filesystem>
#include <optional>

#include "pathline/engine/evaluate.hpp"
#include "pathline/engine/train.hpp"

namespace pathline {

// A new run gets <run.dir>/<run.name>, or <name>-2, -3, ... when that exists, unless `overwrite` is
// set (then the existing directory is emptied first) or `explicit_dir` is given (it must not exist
// or be empty unless `overwrite`).
PATHLINE_API std::filesystem::path create_run_dir(const PipelineConfig& config,
                                                  const std::optional<std::filesystem::path>& explicit_dir,
                                                  bool overwrite);

// A file named on the command line that cannot serve as given (`pathline sample --noise`): the
// command line reports it as bad usage (exit 2), one line that starts with the file.
class PATHLINE_API ArgumentFileError : public InputError {
 public:
  using InputError::InputError;
};

// Weights: a model's parameters and buffers as a safetensors file under their module-tree names
// (docs/weights.md), and back into a freshly built model. load_weights also reads the LibTorch
// archives (.pt) that runs made before Pathline 0.2 wrote. InputError naming the file, and the
// tensor (whose dotted name says the module) that is missing, unexpected or of another shape.
PATHLINE_API void save_weights(Model& model, const std::filesystem::path& file,
                               const std::map<std::string, std::string>& metadata = {});
PATHLINE_API void load_weights(Model& model, const std::filesystem::path& file);
// The weights file of a run that sampling reads: "model.safetensors" (EMA weights when kept),
// "model-raw.safetensors" (use_ema false beside EMA), or an older run's "model-ema.pt" / "model.pt".
PATHLINE_API std::string run_weights_file(const std::filesystem::path& run_dir, bool use_ema);

// Where long loops (training, sampling many batches) report progress: a line rewritten in place
// on a terminal. Unset (the default), they print plain log lines now and then instead.
PATHLINE_API void set_live_progress(Logger live);
PATHLINE_API const Logger& live_progress();

// `pathline run` (train, sample, evaluate) and `pathline train` (train only). Training writes
// checkpoints into RUN_DIR/checkpoints; with `handle_signals`, SIGINT or SIGTERM stop it after a
// checkpoint (Interrupted).
struct JobOptions {
  std::optional<std::filesystem::path> run_dir;
  bool overwrite = false;
  bool do_sample = true;
  bool handle_signals = false;
  StepHook on_step = nullptr;  // TrainOptions::on_step
};
PATHLINE_API std::filesystem::path run_job(const PipelineConfig& config, const Registry& registry,
                                           const JobOptions& options, const Logger& log);

// `pathline resume RUN_DIR`: continues the run's training from its latest good checkpoint (falling
// back past corrupt ones, saying so; from step 0 without any), with the run's config.toml and
// overrides of keys that do not affect training (InputError naming those that do), and finishes it
// as the run's own command (run or train) would have. A finished run is left as it is.
struct ResumeOptions {
  std::vector<std::string> overrides;
  bool handle_signals = false;
  StepHook on_step = nullptr;  // TrainOptions::on_step
};
PATHLINE_API std::filesystem::path resume_job(const std::filesystem::path& run_dir, const Registry& registry,
                                              const ResumeOptions& options, const Logger& log);

// A run directory's pipeline, rebuilt from its config.toml with overrides (threads applied), with
// its weights loaded: `weights_file` when given, else the run's (the EMA ones when [sample] use_ema
// and the run kept them). `weights` names the file used ("" for a model without weights).
// InputError for a directory that is not there; ConfigError for a config that no longer validates.
struct LoadedRun {
  PipelineConfig config;
  Components components;
  std::string weights;
};
PATHLINE_API LoadedRun open_run(const std::filesystem::path& run_dir, const Registry& registry,
                                const std::vector<std::string>& overrides,
                                const std::optional<std::filesystem::path>& weights_file = std::nullopt);

// A trained flow run as a TrainedFlow (BuildContext::open_run; reflow's teacher): its pipeline
// rebuilt and its sampling weights loaded (open_run without overrides), transporting source points
// with its own solver, time grid and guidance. InputError, one line naming the directory, for a
// directory that is not a flow run, a run without weights, or a flow in an autoencoder's latent
// space.
PATHLINE_API std::shared_ptr<TrainedFlow> open_trained_flow(const std::filesystem::path& run_dir,
                                                            const Registry& registry);

// `pathline sample RUN_DIR`: rebuilds the run's pipeline from its config.toml (with overrides),
// loads its weights (or `weights`: a .safetensors file with the model's parameter names, or an
// older run's .pt archive), samples and evaluates into out_dir (default: a new RUN_DIR/sample-<solver>).
// `noise`: a .npy file of source points [n, *shape] to start from instead of drawing [sample] n of
// them (reproducible sampling, comparisons with other integrators, inversion). A noise file that
// is missing, unreadable, of another shape, not floating point or not finite throws
// ArgumentFileError, "FILE: what is wrong", before anything is written.
PATHLINE_API std::filesystem::path sample_job(
    const std::filesystem::path& run_dir, const Registry& registry, const std::vector<std::string>& overrides,
    const std::optional<std::filesystem::path>& out_dir, const Logger& log,
    const std::optional<std::filesystem::path>& weights = std::nullopt,
    const std::optional<std::filesystem::path>& noise = std::nullopt);

// `pathline eval RUN_DIR`: the configured metrics of a run (with overrides) on its samples.npy (and
// labels.npy), or on fresh samples when `fresh` or when the run has none (a train-only run), into
// RUN_DIR/eval.json (or `out`), written atomically: a failure leaves any earlier eval.json as it was.
// `nll` adds a likelihood metric (type nll) when the config has none. Returns the file written.
struct EvalOptions {
  std::vector<std::string> overrides;
  bool fresh = false;
  bool nll = false;
  std::optional<std::filesystem::path> out;
};
PATHLINE_API std::filesystem::path eval_job(const std::filesystem::path& run_dir, const Registry& registry,
                                            const EvalOptions& options, const Logger& log);

}  // namespace pathline
