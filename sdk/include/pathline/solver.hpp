// Kind `solver`: integrates the sampling ODE dx/dt = v(x, t) from t0 to t1 (or an SDE that has the
// same marginals, using the score).
#pragma once

#include "pathline/component.hpp"

namespace pathline {

// What a solver sees of the model: a callback, as in stable-diffusion.cpp's samplers.
class PATHLINE_API VectorField {
 public:
  virtual ~VectorField() = default;
  // Velocity at (x, t), shaped like x.
  virtual torch::Tensor velocity(const torch::Tensor& x, double t) = 0;
  // Score grad log p_t(x) at (x, t), for stochastic samplers.
  virtual torch::Tensor score(const torch::Tensor& x, double t) = 0;
};

struct SolveRequest {
  double t0 = 0.0;
  double t1 = 1.0;
  at::Generator* generator = nullptr;  // for stochastic solvers
  // Called with the initial state and after every step, when set (trajectory plots). `x` is the
  // solver's live state, valid only during the call (solvers update it in place): clone to keep it.
  std::function<void(double t, const torch::Tensor& x)> observer;
};

class PATHLINE_API Solver {
 public:
  virtual ~Solver() = default;
  // Integrates from x at req.t0 to req.t1 and returns the final state.
  virtual torch::Tensor solve(VectorField& field, torch::Tensor x, const SolveRequest& req) = 0;
};

}  // namespace pathline
