// Plugin "example-solvers": one new solver, `example_ralston`.
#include <pathline/plugin.hpp>

namespace {

// Ralston's second-order Runge-Kutta method (Ralston 1962), the two-stage method with the smallest
// error bound: k1 = v(x, t), k2 = v(x + 2/3 h k1, t + 2/3 h), x += h (k1 / 4 + 3 k2 / 4).
// A FixedStepSolver: the engine's time grid gives t and h, the base class walks it.
class RalstonSolver : public pathline::FixedStepSolver {
 public:
  RalstonSolver(const pathline::Params& p, const pathline::BuildContext&) : FixedStepSolver(p) {}

 protected:
  void step(pathline::VectorField& field, torch::Tensor& x, double t, double h) override {
    auto k1 = field.velocity(x, t);
    auto k2 = field.velocity(torch::add(x, k1, 2.0 * h / 3.0), t + 2.0 * h / 3.0);
    x.add_(k1, h / 4.0).add_(k2, 3.0 * h / 4.0);
  }
};

void register_solvers(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Solver, RalstonSolver>(
      {"example_ralston",
       "Ralston's method, order 2, 2 evaluations per step (example plugin)",
       {pathline::FixedStepSolver::steps_param(32)}});
}

}  // namespace

PATHLINE_PLUGIN("example-solvers", "1.0.0", register_solvers)
