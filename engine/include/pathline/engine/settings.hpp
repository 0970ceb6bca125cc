// The engine's own tables ([run], [train], [sample], [eval]) as typed settings. Each table's keys are
// declared (specs()) in the file of the code that reads them and read once, when a config is
// validated, into PipelineConfig::run, train, sample and eval; nothing deeper in the engine looks a
// key up by its name. `pathline inspect TABLE` and docs/pipeline.md's key tables come from specs().
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pathline/params.hpp"

namespace pathline {

// [run] (engine/src/run/settings.cpp)
struct RunSettings {
  std::string name;  // "": the config file's stem
  std::string dir = "runs";
  std::uint64_t seed = 0;
  std::string device = "auto";  // "auto", "cpu", "cuda"
  bool deterministic = false;
  std::int64_t threads = 0;  // 0: every core
  double timeout = 300.0;    // seconds (data parallel)

  PATHLINE_API static const std::vector<ParamSpec>& specs();
  PATHLINE_API static RunSettings read(const Params& table);
};

// [train] (engine/src/train/settings.cpp)
struct TrainSettings {
  std::int64_t steps = 2000, batch_size = 1024;
  double max_seconds = 0.0;         // 0: no time budget
  std::string optimizer = "adamw";  // a key of optimizers()
  bool fused_optimizer = true;
  double lr = 1e-3;
  std::array<double, 2> betas = {0.9, 0.999};
  double eps = 1e-8, weight_decay = 0.0;
  std::string lr_schedule = "constant";  // a key of lr_schedules()
  std::int64_t warmup_steps = 0;
  double grad_clip = 0.0;
  std::int64_t accumulate = 1;
  std::string on_nonfinite = "stop";  // "stop" or "skip"
  std::int64_t checkpoint_every = 500, keep_checkpoints = 2;
  double ema_decay = 0.999;
  bool ema_warmup = true;
  std::string precision = "fp32";       // "fp32" or "bf16"
  std::string loss_weighting = "auto";  // "auto" or a key of loss_weightings()
  double label_dropout = 0.1;
  std::int64_t log_every = 100, progress_every = 0;

  bool bf16() const { return precision == "bf16"; }

  // The choices of `optimizer` and `lr_schedule`, with what each is: the specs' choice lists come
  // from these, as `loss_weighting`'s come from loss_weightings() (train.hpp).
  PATHLINE_API static const std::map<std::string, std::string>& optimizers();
  PATHLINE_API static const std::map<std::string, std::string>& lr_schedules();
  PATHLINE_API static const std::vector<ParamSpec>& specs();
  PATHLINE_API static TrainSettings read(const Params& table);
};

// [sample] (engine/src/sample/settings.cpp)
struct SampleSettings {
  std::int64_t n = 10000, batch_size = 10000, trajectories = 48;
  std::optional<double> t_start, t_end;  // nullopt: "auto"
  std::string final_step = "auto";       // "auto", "denoise", "none"
  bool use_ema = true;
  std::string precision = "fp32";
  double guidance_scale = 1.0;
  std::vector<std::int64_t> labels;

  bool bf16() const { return precision == "bf16"; }

  PATHLINE_API static const std::vector<ParamSpec>& specs();
  PATHLINE_API static SampleSettings read(const Params& table);
};

// [eval] (engine/src/evaluate/settings.cpp)
struct EvalSettings {
  std::int64_t reference_n = 0;  // 0: sample.n

  PATHLINE_API static const std::vector<ParamSpec>& specs();
  PATHLINE_API static EvalSettings read(const Params& table);
};

// The keys of a table's specs as a Markdown table (key, default, meaning), as docs/pipeline.md
// holds them; a test compares the two.
PATHLINE_API std::string settings_markdown(const std::vector<ParamSpec>& specs);

}  // namespace pathline
