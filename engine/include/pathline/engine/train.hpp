// Training: the step as a unit (what checkpoints save, what data parallelism hooks into), the
// learning-rate schedule, loss weightings, and the loop.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "pathline/engine/build.hpp"
#include "pathline/engine/checkpoint.hpp"

namespace pathline {

// Progress and result lines go here (the CLI prints them to stderr).
using Logger = std::function<void(const std::string&)>;

// The learning rate at each step: linear warm-up, then constant, cosine decay to 0 at the last step,
// or linear decay to 0 at the last step.
struct LearningRateSchedule {
  enum class Shape { constant, cosine, linear };
  double base = 1e-3;
  std::int64_t warmup = 0, steps = 0;
  Shape shape = Shape::constant;
  explicit LearningRateSchedule(const TrainSettings& train);
  explicit LearningRateSchedule(const Params& train);  // a [train] table's values
  double at(std::int64_t step) const;
};

// Training stopped on a NaN or infinite loss or gradient ([train] on_nonfinite = "stop").
class PATHLINE_API NonFiniteError : public Error {
 public:
  NonFiniteError(std::int64_t step, std::string quantity, double value);
  std::int64_t step;     // 1-based, as the logs count
  std::string quantity;  // "loss" or "gradient norm"
  double value;
};

// Training stopped by SIGINT or SIGTERM after a checkpoint was written; the CLI exits 128 + signal.
class PATHLINE_API Interrupted : public Error {
 public:
  Interrupted(int signal, const std::string& message) : Error(message), signal(signal) {}
  int signal;
};

// A loss weighting w(t): per-sample weights [B, 1, ...] broadcast like the coefficients, or an
// undefined tensor for "no weighting". Named, so that [train] loss_weighting picks one.
using LossWeighting = std::function<torch::Tensor(const PathCoefficients& c, const torch::Tensor& t)>;
PATHLINE_API const std::map<std::string, LossWeighting>& loss_weightings();

// The training step. It owns everything a resumed run needs to continue exactly: the step count,
// the optimizer, the EMA weights (kept apart from the raw ones), the training generator and the
// data sets' own state.
class FusedAdam;
class DataParallel;
struct GradientBuckets;

class PATHLINE_API Trainer {
 public:
  Trainer(const PipelineConfig& config, Components& components, std::uint64_t rank = 0);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // True when the update runs as one fused pass over every parameter ([train] fused_optimizer on
  // float32 CPU weights); false: LibTorch's per-tensor optimizer.
  bool fused() const { return fused_ != nullptr; }

  // Data parallel: this trainer becomes one rank of `group` (which must outlive it). Its share of
  // [train] batch_size is batch_size / world (one more on the first batch_size % world ranks),
  // drawn from its own stream (seed and rank); the parameters start as rank 0's; every step's
  // gradients and loss are averaged over the ranks before the non-finite check and the update, so
  // every rank makes the same update. InputError when the batch has fewer samples than ranks.
  void attach(DataParallel& group);
  // Reproduces in this one process what `ranks` data-parallel ranks compute: each step draws every
  // rank's share from that rank's stream (coupled within the share, as each rank couples its own)
  // and trains on all of them as one batch. For checking a distributed run against one process.
  void simulate_ranks(int ranks);
  // Data parallel: ask to stop after this step (a signal arrived); the ranks agree through the
  // step's all-reduce, and stop_agreed() tells whether any of them asked.
  void request_stop(bool stop) { stop_requested_ = stop; }
  bool stop_agreed() const { return stop_agreed_; }
  // Data parallel: gathers every rank's generators and data-set state, which rank 0's next
  // save_state() writes beside its own (collective: every rank calls it before a checkpoint).
  void gather_rank_states();
  // Set by load_state: the checkpoint came from another number of ranks (the weights, optimizer,
  // EMA and schedule continue; the ranks' data streams start afresh). 0 when it fits.
  std::int64_t resumed_world_size_mismatch() const { return world_mismatch_; }

  // One optimizer step on a fresh batch (in [train] accumulate micro-batches); returns the
  // (detached) loss. A NaN or infinite loss or gradient throws NonFiniteError before the update
  // (on_nonfinite = "stop") or drops the batch (on_nonfinite = "skip": the step counts, nothing is
  // updated, last_step_skipped() says so).
  torch::Tensor step();
  std::int64_t steps_done() const { return step_; }
  // What the [objective] reported about the last step (Objective::statistics, summed over the
  // step's micro-batches; cnf_mle: "nfe"), by name; empty for flow matching.
  const std::map<std::string, double>& statistics() const { return statistics_; }
  bool last_step_skipped() const { return last_skipped_; }
  std::int64_t skipped_steps() const { return skipped_; }

  // Called between backward and the optimizer step with the parameters (whose .grad() are set):
  // where a data-parallel run all-reduces the gradients.
  std::function<void(const std::vector<torch::Tensor>& parameters)> gradient_hook;

  // Copies the EMA weights (kept when [train] ema_decay > 0) into the model; nothing without them.
  void copy_sampling_weights_to_model();
  bool has_ema() const { return !ema_.empty(); }
  // The EMA weights in the order of model.parameters() (empty without EMA).
  const std::vector<torch::Tensor>& ema_weights() const { return ema_; }
  // The decay applied after step `step` (0-based): ema_decay, or its warm-up.
  double ema_decay_at(std::int64_t step) const;

  // The full training state, for checkpoints: data only, under names that say what each tensor is.
  // load_state checks every name and shape first and throws InputError naming `what` (the
  // checkpoint file) and the first tensor that is missing or does not fit.
  void save_state(NamedState& state) const;
  void load_state(const NamedState& state, const std::string& what);
  // A checkpoint of format 1 (a LibTorch archive, before Pathline 0.2).
  void load_legacy_state(torch::serialize::InputArchive& archive);
  void restore_rank_streams(const std::function<std::optional<torch::Tensor>(const std::string&)>& saved);

 private:
  // One rank's share of a batch: source and target points (coupled), times, labels after dropout
  // (or undefined), the data set's extras, and the path's draw of x_t with its velocity target.
  struct Draw {
    torch::Tensor x0, x1, t, labels;
    Extras extras;
    PathSample at;
  };
  Draw draw(at::Generator& gen, std::int64_t n);
  // Data parallel: averages the gradients over the ranks (the buckets that the backward pass
  // started, then the rest); returns the mean loss; sets stop_agreed_.
  torch::Tensor average_over_ranks(const torch::Tensor& loss);
  void on_gradient(std::size_t param, const torch::Tensor& grad);
  void start_collecting();

  Components& c_;
  // What is trained: the model, or (a pipeline without [model]) the autoencoder.
  torch::nn::Module& model_;
  bool autoencoder_ = false;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;  // unless fused
  std::unique_ptr<FusedAdam> fused_;
  DataParallel* dp_ = nullptr;
  std::vector<at::Generator> rank_gens_;  // simulate_ranks: one stream per simulated rank
  std::int64_t local_batch_ = 0;          // this rank's share of batch_ (batch_ without ranks)
  // Data parallel: the flat gradient buffer, its buckets and the gradient hooks (buckets.hpp).
  std::unique_ptr<GradientBuckets> grads_;
  bool stop_requested_ = false, stop_agreed_ = false;
  std::map<std::string, std::vector<torch::Tensor>> rank_states_;  // gather_rank_states()
  std::int64_t world_mismatch_ = 0;
  std::uint64_t seed_ = 0;
  std::vector<torch::Tensor> ema_;
  at::Generator gen_;
  LearningRateSchedule schedule_;
  LossWeighting weighting_;
  std::int64_t batch_, rank_, accumulate_;
  double grad_clip_, ema_decay_, label_dropout_;
  // The model as the objective sees it: its forward calls name the [model] in exceptions.
  std::shared_ptr<Model> named_model_;
  // The objective's statistics of the last step (summed over its micro-batches), by name.
  std::map<std::string, double> statistics_;
  bool ema_warmup_, bf16_, skip_nonfinite_;
  std::int64_t fault_step_;  // PATHLINE_FAULT=kill-in-step:N (a testing aid), else -1
  std::int64_t step_ = 0, skipped_ = 0;
  bool last_skipped_ = false;
};

struct TrainResult {
  std::int64_t steps = 0;
  std::int64_t resumed_from = 0;  // the checkpoint's step when resumed, else 0
  std::int64_t skipped = 0;       // batches dropped for a non-finite loss or gradient
  double final_loss = 0.0;        // mean loss over the last logging window
  double seconds = 0.0;
  double samples_per_second = 0.0;
  double gflops = 0.0;  // achieved, from the model's MACs per sample (0: unknown)
  // Without EMA both are empty; with it, the raw and the EMA weights in model.parameters() order.
  std::vector<torch::Tensor> raw, ema;
  std::vector<double> losses;        // one per logged window, as in metrics.csv
  std::vector<std::int64_t> logged;  // the step of each entry of losses
  // The [objective]'s statistics (cnf_mle: "nfe"), each a mean per step over the run's steps.
  std::map<std::string, double> statistics;
};

// Where training stands after a step, for a caller's own progress display and stop button.
struct TrainProgress {
  std::int64_t step = 0, steps = 0;  // steps done, of the configured total
  double loss = 0.0;                 // smoothed training loss (NaN before the first finite one)
  double steps_per_second = 0.0;     // since this call to train() started
  double seconds = 0.0;              // training time so far, counting earlier sessions of a resumed run
};
// Called after every step; returning true asks training to stop as a signal does: a checkpoint,
// then Interrupted (signal SIGINT). Ranks of a data-parallel run stop together on signals only: there
// the answer is ignored.
using StepHook = std::function<bool(const TrainProgress&)>;

// How train() reports and recovers.
struct Checkpoint;
struct TrainOptions {
  // Continue from this checkpoint (verified, its training keys checked by the caller); nullptr
  // starts at step 0.
  const Checkpoint* resume_from = nullptr;
  // A live progress line (rewritten in place on a terminal), at most a few times a second; when
  // unset, a plain log line every [train] progress_every steps.
  Logger live;
  // Handle SIGINT and SIGTERM: finish the step, write a checkpoint, throw Interrupted.
  bool handle_signals = false;
  // Called after every step; may ask to stop (the Python module's progress and Ctrl-C).
  StepHook on_step = nullptr;
  // Data parallel: this process is one rank of the group (run_dir empty on all ranks but 0, which
  // alone writes checkpoints and metrics).
  DataParallel* data_parallel = nullptr;
};

// Trains components.model in place, leaving in it the weights sampling uses (the EMA weights when
// kept and [sample] use_ema, else the raw ones; both come back in the result). With a run_dir it
// writes metrics.csv and checkpoints (every [train] checkpoint_every steps and at the end).
PATHLINE_API TrainResult train(const PipelineConfig& config, Components& components,
                               const std::filesystem::path& run_dir, const Logger& log,
                               const TrainOptions& options = {});

}  // namespace pathline
