// Plugin "solvers": explicit fixed-step Runge-Kutta methods for the sampling ODE dx/dt = v(x, t)
// on a uniform grid (Hairer, Norsett & Wanner, "Solving ODEs I", ch. II.1).
#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;
using pathline::SolveRequest;
using pathline::VectorField;

class FixedStepSolver : public pathline::Solver {
 public:
  explicit FixedStepSolver(const Params& p) : steps_(p.integer("steps")) {}

  torch::Tensor solve(VectorField& field, torch::Tensor x, const SolveRequest& req) override {
    x = x.clone();  // the caller's tensor stays untouched; steps update this copy in place
    const double h = (req.t1 - req.t0) / static_cast<double>(steps_);
    // The observer sees the live state: it must clone x to keep it beyond the call.
    if (req.observer) req.observer(req.t0, x);
    for (std::int64_t i = 0; i < steps_; ++i) {
      step(field, x, req.t0 + static_cast<double>(i) * h, h);
      if (req.observer)
        req.observer(i + 1 == steps_ ? req.t1 : req.t0 + static_cast<double>(i + 1) * h, x);
    }
    return x;
  }

 protected:
  // Advances x from t to t + h in place. Never writes into a tensor the field returned or was given
  // (other than x), since a field may return its input or keep it.
  virtual void step(VectorField& f, torch::Tensor& x, double t, double h) = 0;

 private:
  std::int64_t steps_;
};

// Forward Euler, order 1: x += h v(x, t).
class Euler : public FixedStepSolver {
 public:
  Euler(const Params& p, const BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(VectorField& f, torch::Tensor& x, double t, double h) override {
    x.add_(f.velocity(x, t), h);
  }
};

// Explicit midpoint, order 2: x += h v(x + h/2 v(x, t), t + h/2).
class Midpoint : public FixedStepSolver {
 public:
  Midpoint(const Params& p, const BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(VectorField& f, torch::Tensor& x, double t, double h) override {
    auto k1 = f.velocity(x, t);
    x.add_(f.velocity(torch::add(x, k1, h / 2), t + h / 2), h);
  }
};

// Heun (explicit trapezoidal), order 2: k1 = v(x, t), k2 = v(x + h k1, t + h), x += h/2 (k1 + k2).
class Heun : public FixedStepSolver {
 public:
  Heun(const Params& p, const BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(VectorField& f, torch::Tensor& x, double t, double h) override {
    auto k1 = f.velocity(x, t);
    auto k2 = f.velocity(torch::add(x, k1, h), t + h);
    x.add_(k1, h / 2).add_(k2, h / 2);
  }
};

// Classic Runge-Kutta, order 4: x += h/6 (k1 + 2 k2 + 2 k3 + k4).
class Rk4 : public FixedStepSolver {
 public:
  Rk4(const Params& p, const BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(VectorField& f, torch::Tensor& x, double t, double h) override {
    auto k1 = f.velocity(x, t);
    auto k2 = f.velocity(torch::add(x, k1, h / 2), t + h / 2);
    auto k3 = f.velocity(torch::add(x, k2, h / 2), t + h / 2);
    auto k4 = f.velocity(torch::add(x, k3, h), t + h);
    x.add_(k1, h / 6).add_(k2, h / 3).add_(k3, h / 3).add_(k4, h / 6);
  }
};

ParamSpec steps(std::int64_t default_steps) {
  return ParamSpec::integer("steps", default_steps, "number of uniform steps from t0 to t1")
      .at_least(1);
}

void register_solvers(pathline::Registrar& registrar) {
  using pathline::ComponentDecl;
  using pathline::Solver;
  registrar.add_type<Solver, Euler>(
      ComponentDecl{"euler", "forward Euler, order 1, 1 evaluation per step", {steps(100)}});
  registrar.add_type<Solver, Midpoint>(
      ComponentDecl{"midpoint", "explicit midpoint, order 2, 2 evaluations per step", {steps(50)}});
  registrar.add_type<Solver, Heun>(ComponentDecl{
      "heun", "Heun's explicit trapezoidal method, order 2, 2 evaluations per step", {steps(50)}});
  registrar.add_type<Solver, Rk4>(
      ComponentDecl{"rk4", "classic Runge-Kutta, order 4, 4 evaluations per step", {steps(25)}});
}

}  // namespace

PATHLINE_PLUGIN("solvers", "0.1.0", register_solvers)
