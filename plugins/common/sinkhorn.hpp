// The entropic optimal-transport plan between two uniform marginals (Sinkhorn iterations), used by
// the `sinkhorn` coupling (plugins/couplings). Header-only and not part of the SDK, like
// assignment.hpp, so that tests can reach the plan itself and compare it with POT's `ot.sinkhorn`.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>

namespace pathline_plugins::sinkhorn {

// The plan P minimising <P, C> - eps H(P) over matrices with row sums and column sums 1/n (Cuturi
// 2013), in one of two factored forms (rows: source points i, columns: target points j):
// - scaling (log_domain false): P = diag(row) K diag(column), K = exp(-(C - min C) / eps); the
//   shift by min C scales K by a constant, which the scalings absorb, so P is unchanged;
// - log domain (log_domain true): log P = K + row + column with K = -C / eps, row [n, 1] and
//   column [1, n] the dual potentials divided by eps (Peyre & Cuturi 2019, sec. 4.4).
struct EntropicPlan {
  bool log_domain = false;
  torch::Tensor kernel, row, column;

  // P itself, n x n.
  torch::Tensor plan() const {
    if (log_domain) return (kernel + row + column).exp();
    return kernel * row.unsqueeze(1) * column.unsqueeze(0);
  }

  // Row j holds P[:, j] up to a positive factor (the distribution of the source row that target
  // row j is paired with): the column factor is constant along it, so it is left out.
  torch::Tensor column_weights() const {
    if (!log_domain) return (kernel * row.unsqueeze(1)).t().contiguous();
    auto conditional = (kernel + row).t().contiguous();
    return (conditional - std::get<0>(conditional.max(1, true))).exp_();
  }
};

namespace detail {

// Sinkhorn's matrix scaling, two matrix-vector products per iteration: row = (1/n) / (K column),
// then column = (1/n) / (K^T row), from column = 1. Only when the kernel's entries all lie in
// [e^-300, 1], so that neither they nor the scalings leave double range; returns false otherwise,
// or if the scalings still overflowed.
inline bool scaling_iterations(const torch::Tensor& cost, double eps, std::int64_t iterations,
                               double tolerance, EntropicPlan& out) {
  const double low = cost.min().item<double>();
  if ((cost.max().item<double>() - low) / eps > 300) return false;
  const std::int64_t n = cost.size(0);
  const double marginal = 1.0 / static_cast<double>(n);
  const auto kernel = (cost - low).div_(-eps).exp_();
  auto a = torch::ones({n}, cost.options()), b = torch::ones({n}, cost.options());
  for (std::int64_t it = 0; it < iterations; ++it) {
    a = marginal / kernel.mv(b);
    b = marginal / kernel.t().mv(a);
    // After the b update the columns sum to 1/n exactly; check the rows now and then.
    if (tolerance > 0 && (it + 1) % 10 == 0 &&
        (a * kernel.mv(b) - marginal).abs_().sum().item<double>() < tolerance)
      break;
  }
  if (!torch::isfinite(a).all().item<bool>() || !torch::isfinite(b).all().item<bool>()) return false;
  out = EntropicPlan{false, kernel, a, b};
  return true;
}

// The same on the dual potentials in log space, for any eps: f = log(1/n) - logsumexp_j(K + g),
// then g = log(1/n) - logsumexp_i(K + f), from g = 0.
inline EntropicPlan log_domain_iterations(const torch::Tensor& cost, double eps, std::int64_t iterations,
                                          double tolerance) {
  const std::int64_t n = cost.size(0);
  const auto log_kernel = cost.div(-eps);
  const double log_marginal = -std::log(static_cast<double>(n));
  auto f = torch::zeros({n, 1}, cost.options());
  auto g = torch::zeros({1, n}, cost.options());
  for (std::int64_t it = 0; it < iterations; ++it) {
    f = log_marginal - torch::logsumexp(log_kernel + g, 1, true);
    g = log_marginal - torch::logsumexp(log_kernel + f, 0, true);
    if (tolerance > 0 && (it + 1) % 10 == 0) {
      auto rows = torch::logsumexp(log_kernel + f + g, 1).exp_();
      if ((rows - std::exp(log_marginal)).abs_().sum().item<double>() < tolerance) break;
    }
  }
  return EntropicPlan{true, log_kernel, f, g};
}

}  // namespace detail

// The plan for an n x n float64 cost matrix (n >= 1) at regularisation eps > 0 (in the cost's units:
// POT's `reg`): at most `iterations` Sinkhorn iterations, fewer once the row sums are within
// `tolerance` (L1) of uniform, checked every 10 iterations (0: run them all). In matrix-scaling form
// where that fits in double range, else in log space (small eps).
inline EntropicPlan entropic_plan(const torch::Tensor& cost, double eps, std::int64_t iterations,
                                  double tolerance) {
  EntropicPlan plan;
  if (detail::scaling_iterations(cost, eps, iterations, tolerance, plan)) return plan;
  return detail::log_domain_iterations(cost, eps, iterations, tolerance);
}

}  // namespace pathline_plugins::sinkhorn
