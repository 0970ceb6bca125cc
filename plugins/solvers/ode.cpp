// Plugin "solvers": explicit one-step Runge-Kutta methods for the sampling ODE dx/dt = v(x, t)
// (Hairer, Norsett & Wanner, "Solving ODEs I", ch. II.1). Each says only how it steps from t to
// t + h; pathline::FixedStepSolver walks the engine's time grid (the [time_grid] component).
//
// This file also holds the plugin's descriptor: the adaptive (dopri5.cpp), multistep
// (multistep.cpp) and stochastic (sde.cpp) solvers register from their own files.
#include "solvers.hpp"

namespace {

using pathline::BuildContext;
using pathline::FixedStepSolver;
using pathline::Params;
using pathline::VectorField;

// Forward Euler, order 1: x += h v(x, t).
class EulerSolver : public FixedStepSolver {
 public:
  EulerSolver(const Params& p, const BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(VectorField& f, torch::Tensor& x, double t, double h) override { x.add_(f.velocity(x, t), h); }
};

// Explicit midpoint, order 2: x += h v(x + h/2 v(x, t), t + h/2).
class MidpointSolver : public FixedStepSolver {
 public:
  MidpointSolver(const Params& p, const BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(VectorField& f, torch::Tensor& x, double t, double h) override {
    auto k1 = f.velocity(x, t);
    x.add_(f.velocity(torch::add(x, k1, h / 2), t + h / 2), h);
  }
};

// Heun (explicit trapezoidal), order 2: k1 = v(x, t), k2 = v(x + h k1, t + h), x += h/2 (k1 + k2).
class HeunSolver : public FixedStepSolver {
 public:
  HeunSolver(const Params& p, const BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(VectorField& f, torch::Tensor& x, double t, double h) override {
    auto k1 = f.velocity(x, t);
    auto k2 = f.velocity(torch::add(x, k1, h), t + h);
    x.add_(k1, h / 2).add_(k2, h / 2);
  }
};

// Classic Runge-Kutta, order 4: x += h/6 (k1 + 2 k2 + 2 k3 + k4).
class Rk4Solver : public FixedStepSolver {
 public:
  Rk4Solver(const Params& p, const BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(VectorField& f, torch::Tensor& x, double t, double h) override {
    auto k1 = f.velocity(x, t);
    auto k2 = f.velocity(torch::add(x, k1, h / 2), t + h / 2);
    auto k3 = f.velocity(torch::add(x, k2, h / 2), t + h / 2);
    auto k4 = f.velocity(torch::add(x, k3, h), t + h);
    x.add_(k1, h / 6).add_(k2, h / 3).add_(k3, h / 3).add_(k4, h / 6);
  }
};

// MeanFlow's sampler (Geng et al. 2025): one step over [t, t + h] with the model's average velocity,
// x += h u(x, t, t + h). On a model trained on intervals ([objective] meanflow) one step is the whole
// flow; on any other model the average velocity is the velocity at t, and this is Euler.
class MeanFlowSolver : public FixedStepSolver {
 public:
  MeanFlowSolver(const Params& p, const BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(VectorField& f, torch::Tensor& x, double t, double h) override {
    x.add_(f.average_velocity(x, t, t + h), h);
  }
};

void register_solvers(pathline::Registrar& registrar) {
  using pathline::ComponentDecl;
  using pathline::Solver;
  registrar.add_type<Solver, EulerSolver>(ComponentDecl{
      "euler", "forward Euler, order 1, 1 evaluation per step", {FixedStepSolver::steps_param(100)}});
  registrar.add_type<Solver, MidpointSolver>(ComponentDecl{
      "midpoint", "explicit midpoint, order 2, 2 evaluations per step", {FixedStepSolver::steps_param(50)}});
  registrar.add_type<Solver, HeunSolver>(
      ComponentDecl{"heun",
                    "Heun's explicit trapezoidal method, order 2, 2 evaluations per step",
                    {FixedStepSolver::steps_param(50)}});
  registrar.add_type<Solver, Rk4Solver>(ComponentDecl{
      "rk4", "classic Runge-Kutta, order 4, 4 evaluations per step", {FixedStepSolver::steps_param(25)}});
  registrar.add_type<Solver, MeanFlowSolver>(ComponentDecl{
      "meanflow",
      "steps of the model's average velocity, x += h u(x, t, t + h) (MeanFlow, Geng et al. 2025): one step "
      "samples a model trained with [objective] meanflow; Euler on any other model",
      {FixedStepSolver::steps_param(1)}});
  pathline::solvers::register_adaptive(registrar);
  pathline::solvers::register_multistep(registrar);
  pathline::solvers::register_sde(registrar);
}

}  // namespace

PATHLINE_PLUGIN("solvers", "0.1.0", register_solvers)
