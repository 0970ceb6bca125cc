// Multistep solvers: one model evaluation per step, reusing the evaluations of earlier steps, for
// sampling in few steps. They walk the engine's grid (req.times) like FixedStepSolver, but keep a
// history, so each writes its own solve().
#include <cmath>
#include <deque>
#include <utility>
#include <vector>

#include "solvers.hpp"

namespace pathline::solvers {
namespace {

// DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
// Probabilistic Models", Algorithm 2), in data prediction D(x, t) = x1_hat. With
// lambda_t = log(alpha_t / sigma_t) (increasing from noise to data in our time) and
// h = lambda_next - lambda_t, the exact solution of the ODE's linear part gives the step
//
//   x_next = (sigma_next / sigma_t) x + alpha_next (1 - e^-h) D_eff
//          = (sigma_next / sigma_t) x + (alpha_next - sigma_next alpha_t / sigma_t) D_eff,
//
// the second form finite where lambda is not: at alpha_t = 0 (t = 0 on paths that start at pure
// noise, lambda = -inf) it is x_next = (sigma_next / sigma_t) x + alpha_next D, and at
// sigma_next = 0 (the data end) it is x_next = alpha_next D. D_eff = D on the first step (DDIM,
// Song et al. 2021) and on a step with an infinite h; otherwise the second-order multistep
// correction D_eff = D + (D - D_prev) / (2 r), r = h_prev / h.
//
// Backwards (a decreasing grid, data to noise) the same step is DDIM inversion with the multistep
// correction. A step that starts where sigma_t vanishes (below pathline::kMinDivisor: t = 1,
// backwards) cannot divide by it: it asks for the noise prediction E instead and takes the
// first-order step in the form x_next = alpha_next D + sigma_next E, D = (x - sigma_t E) / alpha_t.
class DpmPp2mSolver : public Solver {
 public:
  DpmPp2mSolver(const Params& p, const BuildContext&) : steps_(p.integer("steps")) {}

  std::int64_t grid_steps() const override { return steps_; }
  std::vector<Quantity> quantities() const override { return {Quantity::data}; }

  torch::Tensor solve(VectorField& field, torch::Tensor x, const SolveRequest& req) override {
    x = x.clone();
    if (req.observer) req.observer(req.times.front(), x);
    torch::Tensor previous;  // D of the last step, undefined when the next step is first order
    double previous_h = 0.0;
    for (std::size_t i = 0; i + 1 < req.times.size(); ++i) {
      const double t = req.times[i], t_next = req.times[i + 1];
      if (t_next != t) {
        const ScalarCoefficients c = scalar_coefficients(field, t), n = scalar_coefficients(field, t_next);
        if (!(c.sigma >= kMinDivisor)) {
          auto noise = field.predict(Quantity::noise, x, t);
          auto data = (x - c.sigma * noise) / c.alpha;
          x = data * n.alpha + noise * n.sigma;
          previous = torch::Tensor();
        } else {
          auto data = field.data(x, t);
          const double h = log_snr(n) - log_snr(c);
          torch::Tensor effective = data;
          if (previous.defined() && std::isfinite(h) && std::isfinite(previous_h) && previous_h != 0.0)
            effective = data + (data - previous) * (h / (2.0 * previous_h));
          x = x * (n.sigma / c.sigma) + effective * (n.alpha - n.sigma * c.alpha / c.sigma);
          previous = data;
          previous_h = h;
        }
      }
      if (req.observer) req.observer(t_next, x);
    }
    return x;
  }

 private:
  // lambda = log(alpha / sigma): -inf where alpha = 0, +inf where sigma = 0.
  static double log_snr(const ScalarCoefficients& c) { return std::log(c.alpha) - std::log(c.sigma); }

  std::int64_t steps_;
};

// Adams-Bashforth of order 1 to 3 (Hairer, Norsett & Wanner, "Solving ODEs I", sec. III.1) on the
// velocity, for any grid: x_{n+1} = x_n + sum_j w_j v_{n-j}, with w_j the integral over
// [t_n, t_{n+1}] of the Lagrange polynomial through the last `order` times that is 1 at t_{n-j}
// (the variable-step form, III.5). The start has less history: order 2 starts with one Euler step
// (its h^2 local error keeps the global order 2); order 3 starts with one Heun step (one extra
// evaluation, keeping the global order 3), then takes one second-order step.
class AdamsBashforthSolver : public Solver {
 public:
  AdamsBashforthSolver(const Params& p, const BuildContext&)
      : steps_(p.integer("steps")), order_(static_cast<std::size_t>(p.integer("order"))) {}

  std::int64_t grid_steps() const override { return steps_; }

  torch::Tensor solve(VectorField& field, torch::Tensor x, const SolveRequest& req) override {
    x = x.clone();
    if (req.observer) req.observer(req.times.front(), x);
    std::deque<std::pair<double, torch::Tensor>> history;  // (t, v), newest first
    for (std::size_t i = 0; i + 1 < req.times.size(); ++i) {
      const double t = req.times[i], t_next = req.times[i + 1];
      if (t_next != t) {
        history.emplace_front(t, field.velocity(x, t));
        if (history.size() > order_) history.pop_back();
        if (order_ >= 3 && history.size() == 1) {
          // Heun: x += h/2 (v(x, t) + v(x + h v, t + h)).
          const torch::Tensor& k1 = history.front().second;
          auto k2 = field.velocity(torch::add(x, k1, t_next - t), t_next);
          x = x + (k1 + k2) * ((t_next - t) / 2);
        } else {
          std::vector<double> nodes;
          for (const auto& entry : history) nodes.push_back(entry.first);
          torch::Tensor increment;
          for (std::size_t j = 0; j < history.size(); ++j) {
            auto term = history[j].second * lagrange_integral(nodes, j, t, t_next);
            increment = increment.defined() ? increment + term : term;
          }
          x = x + increment;
        }
      }
      if (req.observer) req.observer(t_next, x);
    }
    return x;
  }

 private:
  // The integral over [a, b] of the Lagrange basis polynomial that is 1 at nodes[j] and 0 at the
  // other nodes: three-point Gauss-Legendre, exact for the degree (at most 2) used here.
  static double lagrange_integral(const std::vector<double>& nodes, std::size_t j, double a, double b) {
    const double middle = (a + b) / 2, half = (b - a) / 2, offset = half * std::sqrt(0.6);
    const double points[3] = {middle - offset, middle, middle + offset};
    const double weights[3] = {5.0 / 9, 8.0 / 9, 5.0 / 9};
    double sum = 0.0;
    for (int q = 0; q < 3; ++q) {
      double basis = 1.0;
      for (std::size_t m = 0; m < nodes.size(); ++m)
        if (m != j) basis *= (points[q] - nodes[m]) / (nodes[j] - nodes[m]);
      sum += weights[q] * basis;
    }
    return sum * half;
  }

  std::int64_t steps_;
  std::size_t order_;
};

}  // namespace

void register_multistep(Registrar& registrar) {
  registrar.add_type<Solver, DpmPp2mSolver>(ComponentDecl{
      "dpmpp_2m",
      "DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in data prediction, 1 evaluation per step",
      {FixedStepSolver::steps_param(20)}});
  registrar.add_type<Solver, AdamsBashforthSolver>(ComponentDecl{
      "adams_bashforth",
      "Adams-Bashforth multistep on the velocity, order 1-3, 1 evaluation per step (order 3: 1 more at the "
      "start)",
      {FixedStepSolver::steps_param(50),
       ParamSpec::integer("order", 2, "order of the method: how many past velocities each step uses")
           .range(1, 3)}});
}

}  // namespace pathline::solvers
