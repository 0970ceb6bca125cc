// Sampling: the model as a vector field (parameterization, condition and guidance folded in), the
// engine's time grid, and the sampling loop.
#pragma once

#include <functional>

#include "pathline/engine/build.hpp"

namespace pathline {

// The model as a vector field for solvers. Converts what the parameterization predicts into any
// quantity and applies classifier-free guidance
//   out = out_u + w (out_c - out_u)
// on the model's own output (the conversions are affine in it, so this is guidance on velocity,
// score or data alike), with the conditional and unconditional halves in one batched forward. With
// w = 1, or without labels, it is one plain conditional forward.
class PATHLINE_API ModelField final : public VectorField {
 public:
  ModelField(Model& model, const Path& path, const Parameterization& parameterization,
             std::int64_t sample_rank, double guidance_scale = 1.0, bool bf16 = false);

  // The labels of the batch being integrated ([B] int64; undefined: unlabelled).
  void set_labels(torch::Tensor labels) { labels_ = std::move(labels); }
  // Names the component in any exception the model's forward pass, the path's coefficients or the
  // parameterization's conversion throws (plugin_call), from the origins of `c`, which must outlive
  // the field; unset, exceptions pass unchanged.
  void name_components(const Components& c) {
    model_origin_ = &c.origin("model");
    path_origin_ = &c.origin("path");
    parameterization_origin_ = &c.origin("parameterization");
  }

  torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override;
  // The model's average velocity over [t, s] when it takes the interval (Model::times holds
  // kIntervalEnd; the parameterization is the velocity), else the velocity at t.
  torch::Tensor average_velocity(const torch::Tensor& x, double t, double s) override;
  PathCoefficients coefficients(double t) const override;
  // Model evaluations so far (one guided evaluation counts once).
  std::int64_t evaluations() const { return evaluations_; }

 private:
  Model& model_;
  const Path& path_;
  const Parameterization& parameterization_;
  std::int64_t rank_;
  double guidance_;
  bool bf16_;  // model evaluations under bfloat16 autocast
  torch::Tensor labels_;
  const ComponentOrigin* model_origin_ = nullptr;
  const ComponentOrigin* path_origin_ = nullptr;
  const ComponentOrigin* parameterization_origin_ = nullptr;
  std::int64_t evaluations_ = 0;

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const Condition& condition);
  // The model's output at (x, t) with guidance, and the condition extras `extras` ([n] each).
  torch::Tensor guided(const torch::Tensor& x, double t, const Extras& extras);
  PathCoefficients path_coefficients(const torch::Tensor& t) const;
};

// Large sampling batches of a model whose rows are independent (Model::rows_independent) are
// evaluated on the CPU as blocks of about kSamplingBlockRows rows, one block after another, each
// with all the intra-op threads: a 2D MLP's activations for 1,280 points stay in the cores' caches,
// where those of 10,000 do not (10,000 points, NFE 40, two threads: about 1.15x the samples per
// second of one whole batch; blocks on one thread each, in parallel, were slower). sampling_blocks(n)
// is how many blocks a batch of n rows becomes (1: not split); it depends on n alone.
inline constexpr std::int64_t kSamplingBlockRows = 1280;
PATHLINE_API std::int64_t sampling_blocks(std::int64_t rows);

// How much the conversion of a prediction of `from` into `to` multiplies its errors at time t on the
// path (|d to / d from| at fixed x_t); 1 when from == to. A noise prediction's velocity on the
// linear path has gain 1 / t, a velocity's data prediction on the polynomial path (n > 1) gains
// (1 - t^n) / (n t^(n-1)), unbounded at t = 0.
PATHLINE_API double conversion_gain(const Path& path, Quantity from, Quantity to, double t);
// The most an automatic sampling interval lets a conversion multiply the model's errors by: 50, the
// gain of a noise prediction at t = 0.02 on the linear path (parameterizations' kSafeCoefficient).
inline constexpr double kMaxConversionGain = 50.0;

// Where sampling integrates, resolved from [sample] t_start, t_end and final_step. "auto" ends come
// from the parameterization's safe_interval on the path (noise and score predictions start past
// t = 0, where they say nothing about the data; data prediction stops short of t = 1), narrowed to
// where each quantity the solver asks for (Solver::quantities) follows from the model's prediction
// with a conversion gain of at most kMaxConversionGain; an explicit value is kept as written. A
// solver whose quantities no interval can give is a ConfigError naming the [solver]. `denoise`: after the
// solver, one more evaluation jumps from x(t_end) to the predicted data x1_hat (final_step = "denoise", or
// "auto" with t_end < 1).
struct SamplingInterval {
  double t_start = 0.0, t_end = 1.0;
  bool denoise = false;
};
PATHLINE_API SamplingInterval sampling_interval(const PipelineConfig& config, const Components& components);

// The times a solver steps through: the time grid cut into the solver's grid_steps() (just the two
// ends for an adaptive solver).
PATHLINE_API std::vector<double> solver_times(const Components& components, double t0, double t1);

// How far a solver lands from the exact flow on the one field every path knows exactly: a point mass
// at the origin, where x_t = sigma_t x0 and every prediction is a multiple of x. Starting from
// sigma_{t_start} x0 on the grid it would be given over [t_start, t_end], the solver runs to the last
// grid time where the noise still dominates (sigma_t >= alpha_t; an adaptive solver to where
// sigma_t = alpha_t); the result is the relative error of its noise scale there (the root mean square
// over 20,000 fixed draws against sigma_t; 0 when the interval starts where the data dominates).
// Errors made there shrink or grow every sample alike and carry through to the data: on the
// variance-exploding path, whose noise scale spans three orders of magnitude, euler is 9.9% off at
// 100 steps, 19% at 50, 38% at 25, 70% at 12, and its samples of the checkerboard (a quickstart model
// trained 1500 steps) score energy distances 0.019, 0.036, 0.11 and 0.58 against midpoint's 0.012 at
// 20 steps; heun with 50 steps is 1.1% off and scores 0.012.
// `intervals`: the model takes an interval (Model::times holds kIntervalEnd), so the field's
// average velocity is the exact flow's; otherwise it is the velocity at t, as the model's would be.
PATHLINE_API double noise_scale_error(Solver& solver, const TimeGrid& grid, const Path& path, double t_start,
                                      double t_end, bool intervals = false);
// The most a pipeline's solver may miss by at its default steps: 15%, where the measurements above put
// the loss at about 0.02 of energy distance. Over it, building the pipeline (validate, run, sample)
// refuses it when [solver] steps was left at its default, and notes it when the user chose the steps
// (few-step sampling is a choice).
inline constexpr double kMaxNoiseScaleError = 0.15;

// The label each of n samples is asked for: [sample] labels in turn, or every class in turn when
// that is empty; undefined for unlabelled data.
PATHLINE_API torch::Tensor sampling_labels(const PipelineConfig& config, const DataInfo& data,
                                           std::int64_t n);

struct SampleResult {
  torch::Tensor samples;       // [n, *shape]
  torch::Tensor labels;        // [n] int64 asked-for labels, or undefined
  torch::Tensor trajectories;  // [steps + 1, K, *shape], or undefined
  std::vector<double> times;   // the time of each trajectory frame (empty without trajectories)
  SamplingInterval interval;
  std::int64_t nfe = 0;  // model evaluations per sample batch (the first)
  // The solver's statistics() (accepted and rejected steps, ...), summed over the batches.
  std::map<std::string, double> solver_statistics;
  double seconds = 0.0;
};

// Called after each batch with the samples done, the total and the seconds so far.
using SampleProgress = std::function<void(std::int64_t done, std::int64_t total, double seconds)>;
// Source points to start sampling from must be [n, *shape] with n >= 1, finite: InputError otherwise.
PATHLINE_API void check_noise(const torch::Tensor& noise, const DataInfo& data);
// `noise`, when given: the source points x0 to start from, [n, *shape] (n replaces [sample] n),
// instead of drawing them from the [source]; the same points give the same samples. `labels`, when
// given with noise: the class each of them is asked for ([n] int64, kNullLabel: unconditional)
// instead of [sample] labels.
PATHLINE_API SampleResult sample(const PipelineConfig& config, Components& components,
                                 const SampleProgress& progress = {}, const torch::Tensor& noise = {},
                                 const torch::Tensor& labels = {});

}  // namespace pathline
