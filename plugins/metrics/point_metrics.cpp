// Metrics "wasserstein", "sliced_wasserstein" and "mmd": distances between the generated and the
// reference point clouds. Samples [N, *shape] are compared as rows of [N, D] (flattened), in float64;
// labels are not looked at. All three are 0 for identical distributions (up to sampling noise), so
// lower is better. A set holding a non-finite value (a diverged model) scores NaN, with the count of
// such rows in the details, rather than stopping the evaluation; docs/metrics.md compares them.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "common/assignment.hpp"
#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The first `limit` samples of a set as a contiguous [n, D] float64 matrix; `metric` names the
// caller in the message when the set is missing, empty or holds no values per sample.
torch::Tensor as_points(const std::string& metric, const torch::Tensor& samples, const char* which,
                        std::int64_t limit = std::numeric_limits<std::int64_t>::max()) {
  if (!samples.defined() || samples.dim() < 1 || samples.size(0) == 0)
    throw pathline::InputError(metric + ": got no " + which + " samples");
  if (samples.numel() == 0) {
    std::string shape;
    for (std::int64_t extent : samples.sizes()) shape += (shape.empty() ? "" : ", ") + std::to_string(extent);
    throw pathline::InputError(metric + ": the " + which + " samples hold no values (shape [" + shape + "])");
  }
  const std::int64_t n = std::min(samples.size(0), limit);
  return samples.narrow(0, 0, n).reshape({n, -1}).to(torch::kDouble).contiguous();
}

void check_same_dimension(const std::string& metric, const torch::Tensor& x, const torch::Tensor& y) {
  if (x.size(1) != y.size(1))
    throw pathline::InputError(metric + ": generated samples of " + std::to_string(x.size(1)) +
                               " values and reference samples of " + std::to_string(y.size(1)) +
                               " values do not compare");
}

// Rows of x and y holding a NaN or an infinity.
double non_finite_rows(const torch::Tensor& x, const torch::Tensor& y) {
  auto count = [](const torch::Tensor& a) {
    return static_cast<double>((~torch::isfinite(a)).any(1).sum().item<std::int64_t>());
  };
  return count(x) + count(y);
}

pathline::MetricResult not_a_number(double bad_rows) { return {kNaN, {{"non_finite_rows", bad_rows}}}; }

// Exact 2-Wasserstein distance between two equal-size point sets (uniform weights): the optimal
// transport between them is a permutation (Birkhoff-von Neumann), so
//   W2 = sqrt(min over permutations s of (1/n) sum_j |x_s(j) - y_j|^2),
// found by the exact assignment solver shared with the minibatch_ot coupling. Each set is cut to
// its first n = min(N, M, max_points) rows. With `squared` the value is W2^2 itself, the mean
// squared distance under the optimal matching: what POT's ot.emd2 returns on ot.dist's default
// (squared Euclidean) cost, and what several papers report under the name "W2".
class Wasserstein : public pathline::Metric {
 public:
  Wasserstein(const Params& p, const BuildContext&)
      : max_points_(p.integer("max_points")), squared_(p.boolean("squared")) {
    if (max_points_ < 2) throw pathline::InputError("wasserstein: max_points must be >= 2");
  }

  pathline::Direction direction() const override { return pathline::Direction::lower_is_better; }

  pathline::MetricResult compute(const pathline::MetricInput& input) override {
    torch::NoGradGuard no_grad;
    torch::Tensor x = as_points(kName, input.generated, "generated");
    torch::Tensor y = as_points(kName, input.reference, "reference");
    check_same_dimension(kName, x, y);
    const std::int64_t n = std::min({x.size(0), y.size(0), max_points_});
    x = x.narrow(0, 0, n);
    y = y.narrow(0, 0, n);
    if (const double bad = non_finite_rows(x, y); bad > 0) return not_a_number(bad);

    // Moving each set to mean zero changes cost[i][j] by a term in i plus a term in j, so the
    // optimal permutation stays, while the cost range the auction scales with (and the rounding of
    // distant clouds) shrinks. The value is then measured on the original points.
    const torch::Tensor cost = torch::cdist(x - x.mean(0, true), y - y.mean(0, true)).square_().contiguous();
    const std::vector<std::int64_t> row_of_col =
        pathline_plugins::assignment::solve_assignment(cost.data_ptr<double>(), n, kName);
    const torch::Tensor rows = torch::tensor(row_of_col, torch::kLong);
    const double mean_squared = (x.index_select(0, rows) - y).square_().sum(1).mean().item<double>();
    return {squared_ ? mean_squared : std::sqrt(mean_squared),
            {{"n", static_cast<double>(n)}, {"mean_squared_cost", mean_squared}},
            squared_ ? "W2 squared" : "W2"};
  }

 private:
  static constexpr const char* kName = "wasserstein";
  std::int64_t max_points_;
  bool squared_;
};

// Sliced 2-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015): the sets are projected on
// `projections` random unit directions theta_k (Gaussian vectors normalised, from a generator of
// the metric's own seeded by `seed`, so the same seed gives the same directions), and
//   SW2 = sqrt((1/P) sum_k W2^2(<x, theta_k>, <y, theta_k>)).
// In 1D the optimal transport between two empirical measures matches quantiles: W2^2 is the
// integral over u in (0, 1) of (F^-1(u) - G^-1(u))^2, with F^-1, G^-1 the step quantile functions of
// the sorted projections. With N = M that pairs the i-th smallest of each set; otherwise every
// point of both sets is used, the integral cut at the breakpoints i / N and j / M.
class SlicedWasserstein : public pathline::Metric {
 public:
  SlicedWasserstein(const Params& p, const BuildContext&)
      : projections_(p.integer("projections")), seed_(p.integer("seed")) {
    if (projections_ < 1) throw pathline::InputError("sliced_wasserstein: projections must be >= 1");
  }

  pathline::Direction direction() const override { return pathline::Direction::lower_is_better; }

  pathline::MetricResult compute(const pathline::MetricInput& input) override {
    torch::NoGradGuard no_grad;
    const torch::Tensor x = as_points(kName, input.generated, "generated");
    const torch::Tensor y = as_points(kName, input.reference, "reference");
    check_same_dimension(kName, x, y);
    if (const double bad = non_finite_rows(x, y); bad > 0) return not_a_number(bad);

    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<std::uint64_t>(seed_));
    torch::Tensor theta = torch::randn({x.size(1), projections_}, gen, torch::kDouble);
    theta.div_(theta.norm(2, {0}, true).clamp_min_(std::numeric_limits<double>::min()));
    const torch::Tensor sx = std::get<0>(x.mm(theta).sort(0));  // [N, P] sorted projections
    const torch::Tensor sy = std::get<0>(y.mm(theta).sort(0));  // [M, P]
    const torch::Tensor squared = squared_w2_1d(sx, sy);        // [P]
    return {std::sqrt(squared.mean().item<double>()),
            {{"projections", static_cast<double>(projections_)},
             {"max_projection_w2", std::sqrt(squared.max().item<double>())}},
            "sliced W2"};
  }

 private:
  // W2^2 between the columns of two sorted [N, P] and [M, P] matrices, column by column. On the
  // common grid of multiples of 1 / (N M) the breakpoints are the integers i M and j N; the
  // quantile of each set on the interval (a, b) between consecutive breakpoints is its sorted value
  // at floor((a + b) / (2 M)) (resp. N), the midpoint's index, computed in exact integer arithmetic.
  static torch::Tensor squared_w2_1d(const torch::Tensor& sx, const torch::Tensor& sy) {
    const std::int64_t n = sx.size(0), m = sy.size(0);
    if (n == m) return (sx - sy).square_().mean(0);
    const auto longs = torch::TensorOptions().dtype(torch::kLong);
    const torch::Tensor ends = std::get<0>(
        torch::cat({torch::arange(1, n + 1, longs) * m, torch::arange(1, m + 1, longs) * n}).sort());
    const torch::Tensor starts = torch::cat({torch::zeros({1}, longs), ends.narrow(0, 0, n + m - 1)});
    const torch::Tensor widths = (ends - starts).to(torch::kDouble) / (static_cast<double>(n) * m);
    const torch::Tensor doubled_mid = ends + starts;
    const torch::Tensor ix = doubled_mid.div(2 * m, "floor").clamp_max_(n - 1);
    const torch::Tensor iy = doubled_mid.div(2 * n, "floor").clamp_max_(m - 1);
    return (sx.index_select(0, ix) - sy.index_select(0, iy)).square_().mul_(widths.unsqueeze(1)).sum(0);
  }

  static constexpr const char* kName = "sliced_wasserstein";
  std::int64_t projections_, seed_;
};

// Maximum mean discrepancy (Gretton et al. 2012) with the kernel k(x, y) = sum_b exp(-|x - y|^2 /
// (2 b^2)) over the bandwidths b, by its unbiased estimate (the U-statistic, Gretton et al. 2012,
// lemma 6):
//   MMD^2_u = sum_{i != j} k(x_i, x_j) / (N (N - 1)) + sum_{i != j} k(y_i, y_j) / (M (M - 1))
//             - 2 sum_{i, j} k(x_i, y_j) / (N M).
// Its expectation is the population MMD^2, 0 exactly when the distributions agree (the Gaussian
// kernel is characteristic), so the estimate scatters around 0 for equal ones and may be slightly
// negative; it is reported as it is, with sqrt(max(0, MMD^2_u)) as the detail "mmd". Each set is cut
// to its first max_points rows. Kernel values are computed kBlock x kBlock at a time in float64
// (8 MB per block), and the self terms only on and above the block diagonal (they are symmetric).
class MaximumMeanDiscrepancy : public pathline::Metric {
 public:
  MaximumMeanDiscrepancy(const Params& p, const BuildContext&)
      : max_points_(p.integer("max_points")), bandwidths_(p.real_list("bandwidths")) {
    if (max_points_ < 2) throw pathline::InputError("mmd: max_points must be >= 2");
    if (bandwidths_.empty()) throw pathline::InputError("mmd: bandwidths must not be empty");
    for (double b : bandwidths_)
      if (!(b > 0) || !std::isfinite(b))
        throw pathline::InputError("mmd: every bandwidth must be a finite number > 0, got " +
                                   std::to_string(b));
  }

  pathline::Direction direction() const override { return pathline::Direction::lower_is_better; }

  pathline::MetricResult compute(const pathline::MetricInput& input) override {
    torch::NoGradGuard no_grad;
    torch::Tensor x = as_points(kName, input.generated, "generated", max_points_);
    torch::Tensor y = as_points(kName, input.reference, "reference", max_points_);
    check_same_dimension(kName, x, y);
    const std::int64_t n = x.size(0), m = y.size(0);
    if (n < 2 || m < 2)
      throw pathline::InputError("mmd: the unbiased estimate needs at least 2 samples of each set, got " +
                                 std::to_string(n) + " generated and " + std::to_string(m) + " reference");
    if (const double bad = non_finite_rows(x, y); bad > 0) return not_a_number(bad);
    // Distances are computed from norms and products (kernel_sum): one common shift of both sets to
    // near the origin keeps them accurate for data far from it, and changes no distance.
    const torch::Tensor centre = torch::cat({x, y}).mean(0, true);
    x = x - centre;
    y = y - centre;

    const double nn = static_cast<double>(n), mm = static_cast<double>(m);
    const double mmd2 = kernel_sum(x, x, true) / (nn * (nn - 1)) + kernel_sum(y, y, true) / (mm * (mm - 1)) -
                        2.0 * kernel_sum(x, y, false) / (nn * mm);
    return {mmd2, {{"mmd", std::sqrt(std::max(mmd2, 0.0))}, {"generated_n", nn}, {"reference_n", mm}}};
  }

 private:
  static constexpr std::int64_t kBlock = 1024;

  // sum over i, j of k(a_i, b_j); with `self` (b is a), over i != j only.
  double kernel_sum(const torch::Tensor& a, const torch::Tensor& b, bool self) const {
    const torch::Tensor a2 = a.square().sum(1), b2 = b.square().sum(1);
    // Scratch blocks, allocated once: fresh 8 MB buffers per block would cost page faults.
    const std::int64_t max_rows = std::min(kBlock, a.size(0)), max_cols = std::min(kBlock, b.size(0));
    torch::Tensor d2_buffer = torch::empty({max_rows, max_cols}, a.options());
    torch::Tensor term_buffer = torch::empty_like(d2_buffer), k_buffer = torch::empty_like(d2_buffer);
    double total = 0.0;
    for (std::int64_t r = 0; r < a.size(0); r += kBlock) {
      const std::int64_t rows = std::min(kBlock, a.size(0) - r);
      for (std::int64_t c = self ? r : 0; c < b.size(0); c += kBlock) {
        const std::int64_t cols = std::min(kBlock, b.size(0) - c);
        torch::Tensor d2 = d2_buffer.narrow(0, 0, rows).narrow(1, 0, cols);
        torch::Tensor term = term_buffer.narrow(0, 0, rows).narrow(1, 0, cols);
        torch::Tensor k = k_buffer.narrow(0, 0, rows).narrow(1, 0, cols);
        // |a_i - b_j|^2 = |a_i|^2 + |b_j|^2 - 2 <a_i, b_j>, clamped against rounding below 0.
        d2.copy_(a2.narrow(0, r, rows).unsqueeze(1)).add_(b2.narrow(0, c, cols).unsqueeze(0));
        d2.addmm_(a.narrow(0, r, rows), b.narrow(0, c, cols).t(), 1.0, -2.0).clamp_min_(0.0);
        k.zero_();
        for (double bw : bandwidths_) k.add_(term.copy_(d2).mul_(-0.5 / (bw * bw)).exp_());
        double block = k.sum().item<double>();
        if (self && c == r) block -= k.diagonal().sum().item<double>();  // the pairs i == j
        total += (self && c != r) ? 2.0 * block : block;
      }
    }
    return total;
  }

  static constexpr const char* kName = "mmd";
  std::int64_t max_points_;
  std::vector<double> bandwidths_;
};

}  // namespace

namespace pathline_metrics {

void register_point_metrics(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Metric, Wasserstein>(pathline::ComponentDecl{
      "wasserstein",
      "exact 2-Wasserstein distance between the first min(N, M, max_points) samples of each set, by "
      "an exact optimal assignment; worst case O(n^3)",
      {ParamSpec::integer("max_points", 2000,
                          "use at most this many samples of each set (the first); the assignment costs "
                          "about 35 n^2 operations, n^3 at worst")
           .at_least(2),
       ParamSpec::boolean("squared", false,
                          "report W2^2 (the mean squared distance under the optimal matching, as POT's "
                          "ot.emd2 on squared Euclidean costs) instead of W2")}});
  registrar.add_type<pathline::Metric, SlicedWasserstein>(pathline::ComponentDecl{
      "sliced_wasserstein",
      "sliced 2-Wasserstein distance: root mean squared 1D W2 of the projections on random unit "
      "directions (quantile matching, every sample used)",
      {ParamSpec::integer("projections", 256, "random directions to project on").at_least(1),
       ParamSpec::integer("seed", 0, "seed of the metric's own generator for the directions").at_least(0)}});
  registrar.add_type<pathline::Metric, MaximumMeanDiscrepancy>(pathline::ComponentDecl{
      "mmd",
      "unbiased squared maximum mean discrepancy with a sum of Gaussian (RBF) kernels; ~0 for equal "
      "distributions, may be slightly negative",
      {ParamSpec::real_list("bandwidths", {0.1, 0.2, 0.5, 1.0, 2.0},
                            "kernel bandwidths b of exp(-|x - y|^2 / (2 b^2)), summed; in the data's units")
           .greater_than(0)
           .min_size(1),
       ParamSpec::integer("max_points", 4000,
                          "use at most this many samples of each set (the first); the cost grows as "
                          "(N + M)^2")
           .at_least(2)}});
}

}  // namespace pathline_metrics
