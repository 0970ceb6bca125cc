// Kind `objective`: what a training step minimises. The engine draws the batch (data, source,
// coupling, times, the path's x_t) and asks the objective for its loss; the objective calls the
// model as often as it needs. Conditional flow matching is the default (`flow_matching`); a
// maximum-likelihood CNF (an ODE solve inside the step) and MeanFlow (average velocities for
// one-step sampling) are its siblings.
#pragma once

#include <torch/csrc/autograd/forward_grad.h>

#include <map>
#include <string>
#include <vector>

#include "pathline/errors.hpp"
#include "pathline/model.hpp"
#include "pathline/path.hpp"

namespace pathline {

// The name of the condition extra that carries a second time, the end s of the interval [t, s]
// over which a model trained on intervals (MeanFlow) predicts the average velocity: [B] float. A
// model that takes it (Model::times) must read its absence as s = t (the average over an empty
// interval is the velocity at t), so that ordinary solvers sample it as a flow.
inline constexpr const char* kIntervalEnd = "t_end";

// For models: whether the context asks the model being built to take the interval's end (an
// objective that trains on intervals), checking that it asks for no other time; `model` names the
// model in the InputError.
inline bool takes_interval(const BuildContext& ctx, const std::string& model) {
  bool interval = false;
  for (const auto& name : ctx.model_times) {
    if (name != kIntervalEnd)
      throw InputError(model + ": takes no time '" + name + "' beside t (only '" + kIntervalEnd +
                       "', the end of an interval)");
    interval = true;
  }
  return interval;
}
// For models: the interval's length s - t per sample, [B] like t; zeros when the condition carries
// no end (sampling with an ordinary solver: the velocity at t).
inline torch::Tensor interval_length(const Condition& condition, const torch::Tensor& t) {
  const torch::Tensor* end = condition.extra(kIntervalEnd);
  return end ? *end - t : torch::zeros_like(t);
}

// One training batch as the engine drew it, on the model's device (a micro-batch's rows when
// [train] accumulate splits the batch).
struct TrainingBatch {
  torch::Tensor x0;  // [B, *shape] source points, paired with x1 by the coupling
  torch::Tensor x1;  // [B, *shape] data points (latents, when an autoencoder maps the data)
  torch::Tensor t;   // [B] times from the time sampler
  // The path's draw at t: x_t, and on a path that is not affine (Path::affine() false) the velocity
  // target of that draw (undefined on an affine path: targets follow from x0, x1 and the
  // coefficients there).
  PathSample at;
  PathCoefficients coefficients;  // the path's at t, broadcast to the rank of x
  // The per-sample weight of [train] loss_weighting, broadcast like the coefficients, or undefined
  // for none.
  torch::Tensor weight;
  Condition condition;  // labels after [train] label_dropout, the data set's extras
};

// A batch's loss and what the objective reports about it, by name (cnf_mle: "nfe", the model
// evaluations of the step). The engine averages each statistic over the steps of a logging window
// in metrics.csv and over the run in summary.json.
struct ObjectiveLoss {
  torch::Tensor loss;  // a scalar whose gradient trains the model
  std::map<std::string, double> statistics = {};
};

class PATHLINE_API Objective {
 public:
  virtual ~Objective() = default;
  // The loss of one batch: call model.forward as needed (under the engine's autocast when [train]
  // precision is bfloat16); gen is the training stream, the only source of randomness.
  virtual ObjectiveLoss loss(Model& model, const TrainingBatch& batch, at::Generator& gen) = 0;
  // The statistics every loss() reports (their names: the columns added to metrics.csv).
  virtual std::vector<std::string> statistics() const { return {}; }
  // Times the model must take beside t, as condition extras of these names (MeanFlow:
  // {kIntervalEnd}). The engine tells the model through BuildContext::model_times and refuses a
  // model whose Model::times() lacks one.
  virtual std::vector<std::string> model_times() const { return {}; }
};

// A model's output on the interval [t, s] and its derivative along the flow, for objectives that
// train on intervals (MeanFlow's target):
//   u = f(x, t, condition + {kIntervalEnd: s}),  du/dt = (df/dx) v + df/dt  (s held fixed),
// a Jacobian-vector product along (v, 1, 0), computed in the same forward pass by LibTorch's
// forward-mode automatic differentiation. u keeps its graph for backward; du_dt is detached. The
// model's operations need forward derivatives (LibTorch's linear, convolution, normalisation and
// activation layers have them; the fused attention kernel on the CPU does not: models that take an
// interval compute attention explicitly). x, v: [B, *shape]; t, s: [B].
struct IntervalDerivative {
  torch::Tensor u, du_dt;
};
inline IntervalDerivative interval_derivative(Model& model, const torch::Tensor& x, const torch::Tensor& t,
                                              const torch::Tensor& s, const torch::Tensor& v,
                                              Condition condition) {
  namespace ad = torch::autograd;
  const std::uint64_t level = ad::ForwardADLevel::get_next_idx();
  // The level is released however this ends (its tangents go with it).
  struct Release {
    std::uint64_t level;
    ~Release() { ad::ForwardADLevel::release_idx(level); }
  } release{level};
  condition.extras[kIntervalEnd] = s;
  const torch::Tensor out =
      model.forward(at::_make_dual(x, v.to(x.scalar_type()), static_cast<std::int64_t>(level)),
                    at::_make_dual(t, torch::ones_like(t), static_cast<std::int64_t>(level)), condition);
  auto [primal, tangent] = at::_unpack_dual(out, static_cast<std::int64_t>(level));
  if (!tangent.defined())  // the output does not depend on x or t
    return {primal, torch::zeros_like(primal).detach()};
  return {primal, tangent.detach().clone()};
}

}  // namespace pathline
