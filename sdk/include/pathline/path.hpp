// Kind `path`: a probability path from the source (t = 0) to the data (t = 1), docs/concepts.md,
// "Paths". An affine Gaussian path x_t = alpha_t x1 + sigma_t x0 only gives the four coefficients;
// the engine builds x_t and the training targets from them. A path that is not affine (a stochastic
// interpolant's gamma_t z term, a bridge) overrides sample() and says affine() == false.
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

// One draw from a path's conditional distribution p_t(x | x0, x1) at a batch of times.
struct PathSample {
  torch::Tensor x_t;       // [B, *shape]
  torch::Tensor velocity;  // the draw's velocity target: d/dt x_t along it (u_t(x_t | x0, x1, ...))
};

class PATHLINE_API Path {
 public:
  virtual ~Path() = default;
  // Coefficients at times t (any shape, values in [0, 1]). A path that is not affine gives those of
  // its affine part (the solvers' starting scale sigma_t and the time grids read them).
  virtual PathCoefficients coefficients(const torch::Tensor& t) const = 0;

  // Draws x_t given the pair (x0, x1) at times t ([B]) and its velocity target, using only `gen`
  // for any randomness of its own. The default is the affine path: x_t = alpha_t x1 + sigma_t x0,
  // velocity alpha'_t x1 + sigma'_t x0, nothing drawn.
  virtual PathSample sample(const torch::Tensor& x0, const torch::Tensor& x1, const torch::Tensor& t,
                            at::Generator& gen) const {
    (void)gen;
    const PathCoefficients c = coefficients(t).broadcast_to_rank(x0.dim());
    return {interpolate(c, x0, x1), conditional_velocity(c, x0, x1)};
  }
  // Whether sample() is the affine default. Only then do the conversions between parameterizations
  // (noise, data, score from a velocity) and the point-mass check of solvers hold: a path that is not
  // affine trains velocity predictions and samples with solvers that ask for the velocity only.
  virtual bool affine() const { return true; }

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
