// Plugin "parameterizations": what the model predicts. The SDK's Parameterization converts the
// prediction to every other quantity through the pair (x0_hat, x1_hat) (docs/concepts.md,
// "Parameterizations").
#include "pathline/plugin.hpp"

namespace {

using pathline::Path;
using pathline::Quantity;

// The smallest coefficient the default sampling interval lets a conversion divide by: noise and
// score predictions start where alpha_t reaches it (t = 0.02 on the linear path), data prediction
// stops where sigma_t falls to it (t = 0.98), and a final denoising step covers the rest.
constexpr double kSafeCoefficient = 0.02;

// |alpha_t| (or |sigma_t|) on a grid of 1001 times over [0, 1].
torch::Tensor coefficient_on_grid(const Path& path, bool alpha, const torch::Tensor& t) {
  auto c = path.coefficients(t);
  return (alpha ? c.alpha : c.sigma).abs();
}

// The first time from the `from_start` end of [0, 1] at which the coefficient reaches
// kSafeCoefficient (bisection between grid points, to 1e-9); the end itself if it already does.
double safe_end(const Path& path, bool alpha, bool from_start) {
  const auto t = torch::linspace(0.0, 1.0, 1001, torch::kFloat64);
  const auto ok = (coefficient_on_grid(path, alpha, t) >= kSafeCoefficient).to(torch::kBool);
  const auto flags = ok.accessor<bool, 1>();
  const std::int64_t n = ok.size(0);
  auto value_ok = [&](double time) {
    return coefficient_on_grid(path, alpha, torch::full({1}, time, torch::kFloat64)).item<double>() >=
           kSafeCoefficient;
  };
  std::int64_t i = from_start ? 0 : n - 1;
  const std::int64_t step = from_start ? 1 : -1;
  if (flags[i]) return from_start ? 0.0 : 1.0;
  while (i >= 0 && i < n && !flags[i]) i += step;
  if (i < 0 || i >= n) return from_start ? 0.0 : 1.0;  // nowhere safe: leave the interval alone
  double bad = t[i - step].item<double>(), good = t[i].item<double>();
  for (int k = 0; k < 60 && std::abs(good - bad) > 1e-9; ++k) {
    const double mid = 0.5 * (bad + good);
    (value_ok(mid) ? good : bad) = mid;
  }
  return good;
}

template <Quantity Q>
class Predicts : public pathline::Parameterization {
 public:
  Predicts(const pathline::Params&, const pathline::BuildContext&) {}
  Quantity predicts() const override { return Q; }

  // Noise and score give x1_hat = (x_t - sigma x0_hat) / alpha: start where alpha_t >= 0.02. Data
  // gives x0_hat = (x_t - alpha x1_hat) / sigma: stop where sigma_t <= 0.02 (the engine's final
  // denoising step then jumps to x1_hat). Velocity is well posed on all of [0, 1].
  std::pair<double, double> safe_interval(const Path& path) const override {
    if constexpr (Q == Quantity::noise || Q == Quantity::score)
      return {safe_end(path, /*alpha=*/true, /*from_start=*/true), 1.0};
    else if constexpr (Q == Quantity::data)
      return {0.0, safe_end(path, /*alpha=*/false, /*from_start=*/false)};
    else
      return {0.0, 1.0};
  }
};

template <Quantity Q>
void add(pathline::Registrar& registrar, const char* doc) {
  registrar.add_type<pathline::Parameterization, Predicts<Q>>(
      pathline::ComponentDecl{pathline::to_string(Q), doc, {}});
}

void register_parameterizations(pathline::Registrar& registrar) {
  // The ends of [0, 1] where a prediction says nothing about part of the pair, and what configs
  // do about it, are in parameterization.hpp ("Finiteness at the ends").
  add<Quantity::velocity>(registrar, "the model predicts the velocity u_t = alpha' x1 + sigma' x0");
  add<Quantity::noise>(registrar,
                       "the model predicts the noise x0 (epsilon-prediction); sampling starts where "
                       "alpha_t >= 0.02 (t_start = auto)");
  add<Quantity::data>(registrar,
                      "the model predicts the data x1 (x-prediction); sampling stops where sigma_t <= 0.02 "
                      "(t_end = auto) and jumps to the predicted data");
  add<Quantity::score>(registrar,
                       "the model predicts the score grad log p_t(x_t) = -x0 / sigma_t; trained with loss "
                       "weight sigma_t^2 (loss_weighting = auto), sampled from where alpha_t >= 0.02");
}

}  // namespace

PATHLINE_PLUGIN("parameterizations", "0.1.0", register_parameterizations)
