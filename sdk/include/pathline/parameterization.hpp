// Kind `parameterization`: what the network predicts (velocity, noise x0, data x1 or score) and
// how that prediction converts to every other quantity. Because x_t = alpha x1 + sigma x0 is linear
// in (x0, x1), any one prediction together with x_t determines the pair (x0_hat, x1_hat), and from
// the pair every other quantity follows (docs/concepts.md, "Parameterizations").
#pragma once

#include "pathline/path.hpp"

namespace pathline {

enum class Quantity { velocity, noise, data, score };

inline const char* to_string(Quantity q) {
  switch (q) {
    case Quantity::velocity:
      return "velocity";
    case Quantity::noise:
      return "noise";
    case Quantity::data:
      return "data";
    case Quantity::score:
      return "score";
  }
  return "?";
}

// Finiteness at the ends of [0, 1].
//
// The conversions divide by alpha_t (noise or score -> data), by sigma_t (data -> noise, and the
// score -x0 / sigma_t itself) and by det_t = alpha sigma' - sigma alpha' (velocity -> the pair).
// alpha vanishes at t = 0 on paths that start at pure noise (linear, cosine, polynomial; VP only
// nearly: alpha_0 = exp(-(beta_min + beta_max) / 4); VE never: alpha = 1), sigma at t = 1 on paths
// that end exactly at the data (not VE, nor linear with sigma_min > 0), and det where the velocity
// carries no information (polynomial, n > 1, at t = 0: alpha' = sigma' = 0). Every division goes
// through safe_divisor: a divisor below kMinDivisor in magnitude is replaced by +-kMinDivisor (for
// det: below kMinDivisor times (|alpha| + |sigma|) (|alpha'| + |sigma'|), so that only a numerically
// singular system is touched, with kMinDivisor^2 as the last resort). So every conversion is finite
// at t = 0 and t = 1, in float32 too, and exact wherever the divisor is above the floor.
//
// Finite is not meaningful at a vanishing divisor. At t = 0 a noise or score prediction says
// nothing about x1 (x_t = x0 there), at t = 1 a data prediction says nothing about x0: the converted
// value is then the model's error times 1 / kMinDivisor. Near the ends the amplification is
// alpha'/alpha ~ 1/t (noise, score) and sigma'/sigma ~ 1/(1 - t) (data). What follows for configs:
// - noise and score models sample from sample.t_start > 0 (0.02 on 2D data; from 1e-3 the energy
//   distance was 5 times worse);
// - data models stop at sample.t_end < 1, or use a solver that never evaluates at t_end (euler,
//   midpoint): heun and rk4 evaluate at t = 1 exactly, where the clamp turns small errors into
//   1e4-sized velocities;
// - the score target -x0 / sigma_t has E|target|^2 ~ int dt / sigma_t^2, which diverges under
//   uniform t: train score models with a time sampler whose density vanishes at t = 1 faster than
//   sigma_t (e.g. beta with b > 2; b = 3 on the linear path is Song et al. 2021's lambda = sigma^2),
//   or weight the loss by sigma_t^2.
// Where the floor does bite on alpha or sigma, the velocity it yields is off by at most
// alpha' |x1| (resp. sigma' |x0|) there, which integrates over the clamped stretch to at most
// kMinDivisor |x1| (resp. |x0|): negligible for sampling.
inline constexpr double kMinDivisor = 1e-4;

inline torch::Tensor safe_divisor(const torch::Tensor& d) {
  auto magnitude = d.abs().clamp_min(kMinDivisor);
  return torch::where(d < 0, -magnitude, magnitude);
}

// The same with a floor of kMinDivisor * scale (at least kMinDivisor^2), for a divisor whose natural
// size is `scale` rather than 1.
inline torch::Tensor safe_divisor(const torch::Tensor& d, const torch::Tensor& scale) {
  auto magnitude = torch::maximum(d.abs(), (scale * kMinDivisor).clamp_min(kMinDivisor * kMinDivisor));
  return torch::where(d < 0, -magnitude, magnitude);
}

// The quantity `q` implied by a pair (x0, x1) on the path (coefficients broadcast).
inline torch::Tensor quantity_from_pair(Quantity q, const torch::Tensor& x0, const torch::Tensor& x1,
                                        const PathCoefficients& c) {
  switch (q) {
    case Quantity::velocity:
      return Path::conditional_velocity(c, x0, x1);
    case Quantity::noise:
      return x0;
    case Quantity::data:
      return x1;
    // Score of the conditional Gaussian N(alpha x1, sigma^2 I) at x_t: -(x_t - alpha x1) / sigma^2.
    case Quantity::score:
      return -x0 / safe_divisor(c.sigma);
  }
  throw Error("unknown quantity");
}

// The pair (x0_hat, x1_hat) implied by a prediction of `q` at x_t.
inline std::pair<torch::Tensor, torch::Tensor> pair_from_quantity(Quantity q, const torch::Tensor& pred,
                                                                  const torch::Tensor& x_t,
                                                                  const PathCoefficients& c) {
  switch (q) {
    case Quantity::velocity: {
      // Solve [x_t; v] = [[alpha, sigma], [alpha', sigma']] [x1; x0]. |det| is at most the product
      // of the rows' sizes; the floor is relative to it, since a path may move slowly everywhere near
      // an end (polynomial, n = 8: det = -8 t^7, 1.4e-5 at t = 0.15) and still determine the pair.
      auto rows = (c.alpha.abs() + c.sigma.abs()) * (c.d_alpha.abs() + c.d_sigma.abs());
      auto det = safe_divisor(c.alpha * c.d_sigma - c.sigma * c.d_alpha, rows);
      auto x1 = (c.d_sigma * x_t - c.sigma * pred) / det;
      auto x0 = (c.alpha * pred - c.d_alpha * x_t) / det;
      return {x0, x1};
    }
    case Quantity::noise:
      return {pred, (x_t - c.sigma * pred) / safe_divisor(c.alpha)};
    case Quantity::data:
      return {(x_t - c.alpha * pred) / safe_divisor(c.sigma), pred};
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
  // The part of [0, 1] on which converting this prediction to velocity on `path` is well posed
  // (noise and score predictions divide by alpha_t, which vanishes at t = 0 on most paths). The
  // engine's default sampling interval stays inside it.
  virtual std::pair<double, double> safe_interval(const Path& path) const {
    (void)path;
    return {0.0, 1.0};
  }
};

}  // namespace pathline
