// Kind `path`: an affine Gaussian probability path x_t = alpha_t x1 + sigma_t x0, with t = 0 noise
// and t = 1 data (docs/concepts.md, "Paths"). A path only gives the four coefficients; the engine builds
// x_t and the training targets from them.
#pragma once

#include "pathline/component.hpp"

namespace pathline {

// alpha_t, sigma_t and their time derivatives, each with the shape of the `t` they came from.
struct PathCoefficients {
  torch::Tensor alpha, sigma, d_alpha, d_sigma;

  // The same coefficients reshaped to broadcast against a batch of samples of rank `rank`
  // (batch dimension included), e.g. [B] -> [B, 1] for 2D points.
  PathCoefficients broadcast_to_rank(std::int64_t rank) const {
    std::vector<std::int64_t> shape(static_cast<std::size_t>(rank), 1);
    shape[0] = -1;
    return {alpha.view(shape), sigma.view(shape), d_alpha.view(shape), d_sigma.view(shape)};
  }
};

class PATHLINE_API Path {
 public:
  virtual ~Path() = default;
  // Coefficients at times t (any shape, values in [0, 1]).
  virtual PathCoefficients coefficients(const torch::Tensor& t) const = 0;

  // x_t = alpha_t x1 + sigma_t x0 (coefficients already broadcast).
  static torch::Tensor interpolate(const PathCoefficients& c, const torch::Tensor& x0,
                                   const torch::Tensor& x1) {
    return torch::addcmul(c.alpha * x1, c.sigma, x0);
  }
  // u_t(x_t | x0, x1) = alpha'_t x1 + sigma'_t x0 (coefficients already broadcast).
  static torch::Tensor conditional_velocity(const PathCoefficients& c, const torch::Tensor& x0,
                                            const torch::Tensor& x1) {
    return torch::addcmul(c.d_alpha * x1, c.d_sigma, x0);
  }
};

}  // namespace pathline
