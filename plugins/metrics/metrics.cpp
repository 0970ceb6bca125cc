// Plugin "metrics": sample-based distances between generated and reference samples (fresh data):
// energy_distance here, wasserstein, sliced_wasserstein and mmd in point_metrics.cpp; and the
// likelihood of fresh data under the model (likelihood.cpp). docs/metrics.md describes them all.
#include <algorithm>
#include <string>

#include "pathline/plugin.hpp"

namespace pathline_metrics {
void register_likelihood(pathline::Registrar& registrar);     // likelihood.cpp
void register_point_metrics(pathline::Registrar& registrar);  // point_metrics.cpp
}  // namespace pathline_metrics

namespace {

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;

// Squared energy distance (Szekely & Rizzo 2013, eq. 2) between the two empirical measures:
//   D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|,
// every expectation a mean over all pairs, i = j included (the V-statistic). It is >= 0 and 0 for
// identical sets: lower is better. Labels are not looked at (the distance is between the whole sets).
// Distances are computed in float64, a block of kChunk rows at a time (kChunk x 10,000 doubles =
// 80 MB), and summed in float64.
class EnergyDistance : public pathline::Metric {
 public:
  EnergyDistance(const Params& p, const BuildContext&) : max_samples_(p.integer("max_samples")) {}

  pathline::Direction direction() const override { return pathline::Direction::lower_is_better; }

  pathline::MetricResult compute(const pathline::MetricInput& input) override {
    torch::NoGradGuard no_grad;
    const torch::Tensor x = flatten(input.generated, "generated"), y = flatten(input.reference, "reference");
    if (x.size(1) != y.size(1))
      throw pathline::InputError("energy_distance: samples of " + std::to_string(x.size(1)) + " and " +
                                 std::to_string(y.size(1)) + " values do not compare");
    const double d2 = 2.0 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y);
    return {std::max(d2, 0.0), {}};  // negative only by rounding
  }

 private:
  static constexpr std::int64_t kChunk = 1024;

  // The first max_samples rows as [N, D] float64.
  torch::Tensor flatten(const torch::Tensor& samples, const char* which) const {
    if (!samples.defined() || samples.dim() < 1 || samples.size(0) == 0)
      throw pathline::InputError(std::string("energy_distance: got no ") + which + " samples");
    const std::int64_t n = std::min(samples.size(0), max_samples_);
    return samples.narrow(0, 0, n).reshape({n, -1}).to(torch::kDouble);
  }

  // Mean of |a_i - b_j| over all pairs (i, j).
  static double mean_distance(const torch::Tensor& a, const torch::Tensor& b) {
    double total = 0.0;
    for (std::int64_t i = 0; i < a.size(0); i += kChunk) {
      const std::int64_t rows = std::min(kChunk, a.size(0) - i);
      total += torch::cdist(a.narrow(0, i, rows), b).sum().item<double>();
    }
    return total / (static_cast<double>(a.size(0)) * static_cast<double>(b.size(0)));
  }

  std::int64_t max_samples_;
};

void register_metrics(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Metric, EnergyDistance>(pathline::ComponentDecl{
      "energy_distance",
      "squared energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| between the empirical measures",
      {ParamSpec::integer("max_samples", 10000, "use at most this many of each set (the first)")
           .at_least(1)}});
  pathline_metrics::register_point_metrics(registrar);
  pathline_metrics::register_likelihood(registrar);
}

}  // namespace

PATHLINE_PLUGIN("metrics", "0.1.0", register_metrics)
