// Kind `parameterization`: what the network predicts (velocity, noise x0, data x1 or score) and
// how that prediction converts to every other quantity. Because x_t = alpha x1 + sigma x0 is linear
// in (x0, x1), any one prediction together with x_t determines the pair (x0_hat, x1_hat), and from
// the pair every other quantity follows (DESIGN.md, "Parameterizations").
#pragma once

#include "pathline/path.hpp"

namespace pathline {

enum class Quantity { velocity, noise, data, score };

inline const char* to_string(Quantity q) {
  switch (q) {
    case Quantity::velocity: return "velocity";
    case Quantity::noise: return "noise";
    case Quantity::data: return "data";
    case Quantity::score: return "score";
  }
  return "?";
}

// Coefficients vanish at the ends of [0, 1] (alpha_0 = 0, sigma_1 = 0). Every division in a
// conversion goes through this: a divisor smaller than kMinDivisor in magnitude is replaced by
// +-kMinDivisor, so conversions stay finite at t = 0 and t = 1 and are exact elsewhere.
inline constexpr double kMinDivisor = 1e-4;

inline torch::Tensor safe_divisor(const torch::Tensor& d) {
  auto magnitude = d.abs().clamp_min(kMinDivisor);
  return torch::where(d < 0, -magnitude, magnitude);
}

// The quantity `q` implied by a pair (x0, x1) on the path (coefficients broadcast).
inline torch::Tensor quantity_from_pair(Quantity q, const torch::Tensor& x0, const torch::Tensor& x1,
                                        const PathCoefficients& c) {
  switch (q) {
    case Quantity::velocity: return Path::conditional_velocity(c, x0, x1);
    case Quantity::noise: return x0;
    case Quantity::data: return x1;
    // Score of the conditional Gaussian N(alpha x1, sigma^2 I) at x_t: -(x_t - alpha x1) / sigma^2.
    case Quantity::score: return -x0 / safe_divisor(c.sigma);
  }
  throw Error("unknown quantity");
}

// The pair (x0_hat, x1_hat) implied by a prediction of `q` at x_t.
inline std::pair<torch::Tensor, torch::Tensor> pair_from_quantity(Quantity q,
                                                                  const torch::Tensor& pred,
                                                                  const torch::Tensor& x_t,
                                                                  const PathCoefficients& c) {
  switch (q) {
    case Quantity::velocity: {
      // Solve [x_t; v] = [[alpha, sigma], [alpha', sigma']] [x1; x0].
      auto det = safe_divisor(c.alpha * c.d_sigma - c.sigma * c.d_alpha);
      auto x1 = (c.d_sigma * x_t - c.sigma * pred) / det;
      auto x0 = (c.alpha * pred - c.d_alpha * x_t) / det;
      return {x0, x1};
    }
    case Quantity::noise: return {pred, (x_t - c.sigma * pred) / safe_divisor(c.alpha)};
    case Quantity::data: return {(x_t - c.alpha * pred) / safe_divisor(c.sigma), pred};
    case Quantity::score: {
      auto x0 = -c.sigma * pred;
      return {x0, (x_t - c.sigma * x0) / safe_divisor(c.alpha)};
    }
  }
  throw Error("unknown quantity");
}

// Converts a prediction of `from` at x_t into the quantity `to`.
inline torch::Tensor convert_prediction(Quantity from, Quantity to, const torch::Tensor& pred,
                                        const torch::Tensor& x_t, const PathCoefficients& c) {
  if (from == to) return pred;
  auto [x0, x1] = pair_from_quantity(from, pred, x_t, c);
  return quantity_from_pair(to, x0, x1, c);
}

class PATHLINE_API Parameterization {
 public:
  virtual ~Parameterization() = default;
  // What the model's output means.
  virtual Quantity predicts() const = 0;
  // The regression target for a training pair (coefficients broadcast).
  virtual torch::Tensor target(const torch::Tensor& x0, const torch::Tensor& x1,
                               const PathCoefficients& c) const {
    return quantity_from_pair(predicts(), x0, x1, c);
  }
  // The model's output at x_t expressed as `to`.
  virtual torch::Tensor convert(const torch::Tensor& output, const torch::Tensor& x_t,
                                const PathCoefficients& c, Quantity to) const {
    return convert_prediction(predicts(), to, output, x_t, c);
  }
};

}  // namespace pathline
