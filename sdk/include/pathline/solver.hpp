// Kind `solver`: integrates the sampling ODE dx/dt = v(x, t) over the engine's time grid (or an
// SDE with the same marginals, using the score).
#pragma once

#include "pathline/parameterization.hpp"

namespace pathline {

// What a solver sees of the model: a callback, as in stable-diffusion.cpp's samplers. Guidance,
// the parameterization and the condition are already folded in.
class PATHLINE_API VectorField {
 public:
  virtual ~VectorField() = default;
  // The model's prediction at (x, t) expressed as `q`, shaped like x.
  virtual torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) = 0;
  // The path's coefficients at t (shape [1], float64).
  virtual PathCoefficients coefficients(double t) const = 0;

  // Velocity v(x, t).
  torch::Tensor velocity(const torch::Tensor& x, double t) { return predict(Quantity::velocity, x, t); }
  // Score grad log p_t(x), for stochastic samplers.
  torch::Tensor score(const torch::Tensor& x, double t) { return predict(Quantity::score, x, t); }
  // The predicted data x1_hat (a final denoising step, data-prediction multistep solvers).
  torch::Tensor data(const torch::Tensor& x, double t) { return predict(Quantity::data, x, t); }
  // The average velocity over [t, s] along the flow from x at t, (x_s - x_t) / (s - t): what a
  // model trained on intervals ([objective] meanflow) predicts, so that x_s = x + (s - t) u is one
  // step. A field whose model takes no interval gives the velocity at t, which makes that step an
  // Euler step (ABI 8).
  virtual torch::Tensor average_velocity(const torch::Tensor& x, double t, double s) {
    (void)s;
    return velocity(x, t);
  }
};

struct SolveRequest {
  // The engine's grid: times.front() is where x is, times.back() where to arrive; monotone,
  // decreasing when integrating from data back to noise. A fixed-step solver steps from each time to
  // the next; an adaptive one uses only the ends.
  std::vector<double> times;
  at::Generator* generator = nullptr;  // the only source of randomness for stochastic solvers
  // Called with the initial state and after every step, when set (trajectory plots). `x` is the
  // solver's live state, valid only during the call (solvers update it in place): clone to keep it.
  std::function<void(double t, const torch::Tensor& x)> observer;

  double t0() const { return times.front(); }
  double t1() const { return times.back(); }
};

class PATHLINE_API Solver {
 public:
  virtual ~Solver() = default;
  // How many steps the engine's grid should have (the solver's `steps`), or 0 for an adaptive
  // solver, which is given just the two ends.
  virtual std::int64_t grid_steps() const = 0;
  // Integrates from x at req.t0() to req.t1() and returns the final state, shaped like x.
  virtual torch::Tensor solve(VectorField& field, torch::Tensor x, const SolveRequest& req) = 0;
  // The quantities solve() asks the field for (VectorField::predict, velocity(), score(), data()),
  // or derives from them itself. The engine keeps the sampling interval where the model's prediction
  // converts to each with bounded error: a data-prediction solver on a path whose velocity says
  // nothing about the data at t = 0 then starts a little later. Velocity by default.
  virtual std::vector<Quantity> quantities() const { return {Quantity::velocity}; }
  // Counts worth reporting about the last solve(), by name (an adaptive solver's "accepted_steps"
  // and "rejected_steps"); the engine logs them and writes them to summary.json. None by default.
  virtual std::map<std::string, double> statistics() const { return {}; }
};

// The base of every one-step method on the engine's grid: declare `steps` with steps_param(), and
// write step(). No grid code of one's own.
class PATHLINE_API FixedStepSolver : public Solver {
 public:
  explicit FixedStepSolver(const Params& p) : steps_(p.integer("steps")) {}

  static ParamSpec steps_param(std::int64_t default_steps) {
    return ParamSpec::integer("steps", default_steps, "number of steps of the engine's time grid")
        .at_least(1);
  }

  std::int64_t grid_steps() const override { return steps_; }

  torch::Tensor solve(VectorField& field, torch::Tensor x, const SolveRequest& req) override {
    x = x.clone();  // the caller's tensor stays untouched; steps update this copy in place
    if (req.observer) req.observer(req.times.front(), x);
    for (std::size_t i = 0; i + 1 < req.times.size(); ++i) {
      step(field, x, req.times[i], req.times[i + 1] - req.times[i]);
      if (req.observer) req.observer(req.times[i + 1], x);
    }
    return x;
  }

 protected:
  // Advances x from t to t + h in place (h < 0 when integrating backwards). Never writes into a
  // tensor the field returned or was given (other than x), since a field may return its input.
  virtual void step(VectorField& field, torch::Tensor& x, double t, double h) = 0;

 private:
  std::int64_t steps_;
};

}  // namespace pathline
