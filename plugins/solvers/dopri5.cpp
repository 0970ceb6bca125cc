// dopri5: the adaptive Dormand-Prince 5(4) pair (Dormand & Prince 1980; Hairer, Norsett & Wanner,
// "Solving ODEs I", sec. II.5, table 5.2, and II.4 for the step-size control and the initial step).
// Seven stages, the seventh at the new point, so it is the next step's first (FSAL): 6 evaluations per
// attempted step. The fifth-order solution is kept (local extrapolation); the embedded fourth-order
// one only estimates the error.
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>

#include "solvers.hpp"

namespace pathline::solvers {
namespace {

// Butcher tableau (c_i, a_ij), the fifth-order weights b_i (= the last row of a, hence FSAL) and
// e_i = b_i - b*_i, the difference to the embedded fourth-order weights.
constexpr double kC2 = 1.0 / 5, kC3 = 3.0 / 10, kC4 = 4.0 / 5, kC5 = 8.0 / 9;
constexpr double kA21 = 1.0 / 5;
constexpr double kA31 = 3.0 / 40, kA32 = 9.0 / 40;
constexpr double kA41 = 44.0 / 45, kA42 = -56.0 / 15, kA43 = 32.0 / 9;
constexpr double kA51 = 19372.0 / 6561, kA52 = -25360.0 / 2187, kA53 = 64448.0 / 6561, kA54 = -212.0 / 729;
constexpr double kA61 = 9017.0 / 3168, kA62 = -355.0 / 33, kA63 = 46732.0 / 5247, kA64 = 49.0 / 176,
                 kA65 = -5103.0 / 18656;
constexpr double kB1 = 35.0 / 384, kB3 = 500.0 / 1113, kB4 = 125.0 / 192, kB5 = -2187.0 / 6784,
                 kB6 = 11.0 / 84;
constexpr double kE1 = 71.0 / 57600, kE3 = -71.0 / 16695, kE4 = 71.0 / 1920, kE5 = -17253.0 / 339200,
                 kE6 = 22.0 / 525, kE7 = -1.0 / 40;

// x + h sum_i a_i k_i, in a new tensor (never one the field returned, which may be its input).
torch::Tensor advance(const torch::Tensor& x, double h, std::initializer_list<double> a,
                      std::initializer_list<torch::Tensor> k) {
  torch::Tensor y = x.clone();
  auto ki = k.begin();
  for (double ai : a) y.add_(*ki++, h * ai);
  return y;
}

// Root mean square over every element, accumulated in double: the error norm of Hairer et al.
// (II.4, eq. 4.11), taken over the whole batch at once.
double rms(const torch::Tensor& v) { return std::sqrt(v.square().mean(torch::kFloat64).item<double>()); }

class Dopri5Solver : public Solver {
 public:
  Dopri5Solver(const Params& p, const BuildContext&)
      : atol_(p.real("atol")),
        rtol_(p.real("rtol")),
        first_step_(p.real("first_step")),
        max_steps_(p.integer("max_steps")),
        safety_(p.real("safety")),
        min_factor_(p.real("min_factor")),
        max_factor_(p.real("max_factor")) {}

  // Adaptive: the engine hands over just the two ends of the interval.
  std::int64_t grid_steps() const override { return 0; }

  std::map<std::string, double> statistics() const override {
    return {{"accepted_steps", double(accepted_)},
            {"rejected_steps", double(rejected_)},
            {"evaluations", double(evaluations_)}};
  }

  torch::Tensor solve(VectorField& field, torch::Tensor x, const SolveRequest& req) override {
    accepted_ = rejected_ = evaluations_ = 0;
    const double t0 = req.t0(), t1 = req.t1();
    if (!std::isfinite(t0) || !std::isfinite(t1))
      throw Error("solver 'dopri5': the interval ends must be finite, got " + time_text(t0) + " and " +
                  time_text(t1));
    x = x.clone();
    if (req.observer) req.observer(t0, x);
    if (t0 == t1) return x;
    const double span = std::abs(t1 - t0), direction = t1 > t0 ? 1.0 : -1.0;
    auto f = [&](const torch::Tensor& y, double t) {
      ++evaluations_;
      return field.velocity(y, t);
    };

    torch::Tensor k1 = f(x, t0);
    double h = std::min(first_step_ > 0 ? first_step_ : initial_step(f, x, k1, t0, direction, span), span);
    double t = t0;
    bool after_rejection = false;
    while (t != t1) {
      if (accepted_ + rejected_ >= max_steps_)
        throw InputError("solver 'dopri5': max_steps = " + std::to_string(max_steps_) + " steps (" +
                         std::to_string(accepted_) + " accepted, " + std::to_string(rejected_) +
                         " rejected) went from t = " + time_text(t0) + " only to t = " + time_text(t) +
                         ", not to " + time_text(t1) + "; raise [solver] max_steps or loosen atol / rtol");
      // A step that would stop just short of the end is stretched to it (Hairer's code DOPRI5), and
      // the last one lands on t1 exactly.
      const bool last = std::abs(t1 - t) <= 1.01 * h;
      const double step = last ? t1 - t : direction * h;
      const double t_new = last ? t1 : t + step;
      if (t_new == t)
        throw Error("solver 'dopri5': the step size underflowed at t = " + time_text(t) +
                    " (the field is too stiff there, or not finite); loosen atol / rtol");

      auto k2 = f(advance(x, step, {kA21}, {k1}), t + kC2 * step);
      auto k3 = f(advance(x, step, {kA31, kA32}, {k1, k2}), t + kC3 * step);
      auto k4 = f(advance(x, step, {kA41, kA42, kA43}, {k1, k2, k3}), t + kC4 * step);
      auto k5 = f(advance(x, step, {kA51, kA52, kA53, kA54}, {k1, k2, k3, k4}), t + kC5 * step);
      auto k6 = f(advance(x, step, {kA61, kA62, kA63, kA64, kA65}, {k1, k2, k3, k4, k5}), t_new);
      auto x_new = advance(x, step, {kB1, kB3, kB4, kB5, kB6}, {k1, k3, k4, k5, k6});
      auto k7 = f(x_new, t_new);

      auto error =
          advance(torch::zeros_like(x), step, {kE1, kE3, kE4, kE5, kE6, kE7}, {k1, k3, k4, k5, k6, k7});
      auto scale = torch::maximum(x.abs(), x_new.abs()).mul_(rtol_).add_(atol_);
      const double norm = rms(error.div_(scale));
      // The local error is O(h^5) (the embedded order 4, plus one): h norm^(-1/5) would just meet the
      // tolerance; `safety` aims below it and the factor bounds damp one odd estimate (II.4, eq. 4.13).
      // A non-finite estimate (a field that returned inf or nan) is a rejection with the smallest factor.
      const bool finite = std::isfinite(norm);
      const double proposal = !finite       ? min_factor_
                              : norm == 0.0 ? max_factor_
                                            : safety_ * std::pow(norm, -0.2);
      if (finite && norm <= 1.0) {
        ++accepted_;
        x = x_new;
        k1 = k7;
        t = t_new;
        if (req.observer) req.observer(t, x);
        // No growth right after a rejection (as in DOPRI5): it keeps h from alternating.
        h = std::abs(step) * std::clamp(proposal, min_factor_, after_rejection ? 1.0 : max_factor_);
        after_rejection = false;
      } else {
        ++rejected_;
        h = std::abs(step) * std::clamp(proposal, min_factor_, 1.0);
        after_rejection = true;
      }
    }
    return x;
  }

 private:
  // The starting step of Hairer et al. (II.4, "Starting step size"): h0 = 0.01 |x| / |v| (scaled
  // norms), one Euler step of that size to estimate the second derivative, then the step whose
  // fifth-order error term would be 0.01, at most 100 h0. One evaluation.
  template <class F>
  double initial_step(F& f, const torch::Tensor& x, const torch::Tensor& k1, double t0, double direction,
                      double span) const {
    auto scale = x.abs().mul(rtol_).add_(atol_);
    const double d0 = rms(x / scale), d1 = rms(k1 / scale);
    double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
    h0 = std::min(h0, span);
    auto k = f(torch::add(x, k1, direction * h0), t0 + direction * h0);
    const double d2 = rms((k - k1) / scale) / h0;
    const double top = std::max(d1, d2);
    const double h1 = top <= 1e-15 ? std::max(1e-6, h0 * 1e-3) : std::pow(0.01 / top, 0.2);
    return std::min(100 * h0, h1);
  }

  double atol_, rtol_, first_step_;
  std::int64_t max_steps_;
  double safety_, min_factor_, max_factor_;
  std::int64_t accepted_ = 0, rejected_ = 0, evaluations_ = 0;
};

}  // namespace

void register_adaptive(Registrar& registrar) {
  registrar.add_type<Solver, Dopri5Solver>(ComponentDecl{
      "dopri5",
      "adaptive Dormand-Prince 5(4), FSAL: 6 evaluations per attempted step, plus 1 (2 with the automatic "
      "first step); atol and rtol set the steps, the time grid is not used",
      {ParamSpec::real("atol", 1e-5, "absolute tolerance of the local error").greater_than(0.0),
       ParamSpec::real("rtol", 1e-5, "relative tolerance of the local error (to max(|x|, |x_new|))")
           .at_least(0.0),
       ParamSpec::real("first_step", 0.0,
                       "size of the first step; 0: chosen automatically (Hairer's algorithm)")
           .at_least(0.0),
       ParamSpec::integer("max_steps", 10000,
                          "most steps (accepted and rejected) one solve may take; more is an error")
           .at_least(1),
       ParamSpec::real("safety", 0.9, "factor on the step size that would just meet the tolerance")
           .greater_than(0.0)
           .at_most(1.0),
       ParamSpec::real("min_factor", 0.2, "smallest factor by which one step may shrink the next")
           .greater_than(0.0)
           .less_than(1.0),
       ParamSpec::real("max_factor", 10.0, "largest factor by which one step may grow the next")
           .greater_than(1.0)}});
}

}  // namespace pathline::solvers
