// Plugin "example-solvers": one new solver, `example_ralston`.
#include <pathline/plugin.hpp>

namespace {

// Ralston's second-order Runge-Kutta method (Ralston 1962), the two-stage method with the smallest
// error bound: k1 = v(x, t), k2 = v(x + 2/3 h k1, t + 2/3 h), x += h (k1 / 4 + 3 k2 / 4).
class RalstonSolver : public pathline::Solver {
 public:
  RalstonSolver(const pathline::Params& p, const pathline::BuildContext&) : steps_(p.integer("steps")) {}

  torch::Tensor solve(pathline::VectorField& field, torch::Tensor x,
                      const pathline::SolveRequest& req) override {
    x = x.clone();  // updated in place below; the caller's tensor stays as it was
    const double h = (req.t1 - req.t0) / static_cast<double>(steps_);
    if (req.observer) req.observer(req.t0, x);
    for (std::int64_t i = 0; i < steps_; ++i) {
      const double t = req.t0 + static_cast<double>(i) * h;
      auto k1 = field.velocity(x, t);
      auto k2 = field.velocity(torch::add(x, k1, 2.0 * h / 3.0), t + 2.0 * h / 3.0);
      x.add_(k1, h / 4.0).add_(k2, 3.0 * h / 4.0);
      if (req.observer) req.observer(i + 1 == steps_ ? req.t1 : t + h, x);
    }
    return x;
  }

 private:
  std::int64_t steps_;
};

void register_solvers(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Solver, RalstonSolver>(
      {"example_ralston",
       "Ralston's method, order 2, 2 evaluations per step (example plugin)",
       {pathline::ParamSpec::integer("steps", 32, "number of uniform steps from t0 to t1").at_least(1)}});
}

}  // namespace

PATHLINE_PLUGIN("example-solvers", "1.0.0", register_solvers)
