// The point-cloud metrics `wasserstein`, `sliced_wasserstein` and `mmd` (plugins/metrics), built
// through the registry: exact against brute force and closed forms, each one's sense (near 0 for two
// samples of one distribution, growing with a shift and with a blur), reproducibility, parameter
// bounds and input errors. docs/metrics.md describes the metrics.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "pathline/engine/config.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

const std::vector<std::string> kPointMetrics = {"wasserstein", "sliced_wasserstein", "mmd"};

std::shared_ptr<Metric> make_metric(const std::string& name,
                                    const std::map<std::string, ParamValue>& changes = {}) {
  const Registry& registry = testing::builtin_registry();
  return registry.create<Metric>(name, testing::default_params(registry, Kind::metric, name, changes),
                                 BuildContext{});
}

// The metric on generated and reference samples, as the engine calls it.
MetricResult score(Metric& metric, const torch::Tensor& generated, const torch::Tensor& reference) {
  MetricInput input;
  input.generated = generated;
  input.reference = reference;
  return metric.compute(input);
}

at::Generator generator(std::uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// W2 by brute force: the least mean squared distance over all n! pairings of two [n, D] sets.
double brute_force_w2(const torch::Tensor& x, const torch::Tensor& y) {
  const auto a = x.reshape({x.size(0), -1}).to(torch::kDouble),
             b = y.reshape({y.size(0), -1}).to(torch::kDouble);
  const std::int64_t n = a.size(0);
  const auto cost = (a.unsqueeze(1) - b.unsqueeze(0)).square().sum(2).contiguous();
  const double* c = cost.data_ptr<double>();
  std::vector<std::int64_t> perm(static_cast<std::size_t>(n));
  std::iota(perm.begin(), perm.end(), std::int64_t{0});
  double best = std::numeric_limits<double>::infinity();
  do {
    double total = 0.0;
    for (std::int64_t j = 0; j < n; ++j) total += c[perm[static_cast<std::size_t>(j)] * n + j];
    best = std::min(best, total);
  } while (std::next_permutation(perm.begin(), perm.end()));
  return std::sqrt(best / static_cast<double>(n));
}

// The unbiased MMD^2 written out in one go, on the whole kernel matrices.
double direct_mmd2(const torch::Tensor& x, const torch::Tensor& y, const std::vector<double>& bandwidths) {
  auto kernel = [&](const torch::Tensor& a, const torch::Tensor& b) {
    const auto d2 = (a.unsqueeze(1) - b.unsqueeze(0)).square().sum(2);
    auto k = torch::zeros_like(d2);
    for (double bw : bandwidths) k += torch::exp(-d2 / (2 * bw * bw));
    return k;
  };
  const auto a = x.to(torch::kDouble), b = y.to(torch::kDouble);
  const double n = static_cast<double>(a.size(0)), m = static_cast<double>(b.size(0));
  const auto kxx = kernel(a, a), kyy = kernel(b, b);
  return (kxx.sum() - kxx.diagonal().sum()).item<double>() / (n * (n - 1)) +
         (kyy.sum() - kyy.diagonal().sum()).item<double>() / (m * (m - 1)) -
         2 * kernel(a, b).sum().item<double>() / (n * m);
}

// Four tight clusters at (+-1.5, +-1.5), std 0.05, n / 4 points in each (counts fixed, so that two
// draws differ only inside the clusters).
torch::Tensor clusters(std::int64_t n, at::Generator& gen) {
  const auto centres = torch::tensor({{1.5, 1.5}, {-1.5, 1.5}, {-1.5, -1.5}, {1.5, -1.5}}).repeat({n / 4, 1});
  return centres + 0.05 * torch::randn({n, 2}, gen);
}

// ---------------------------------------------------------------------------------------------
// Registration, parameters, inputs

TEST(MetricsPoints, RegisteredLowerIsBetterWithDocumentedParameters) {
  const Registry& registry = testing::builtin_registry();
  for (const std::string& name : kPointMetrics) {
    const ComponentEntry* entry = registry.find(Kind::metric, name);
    ASSERT_NE(entry, nullptr) << name;
    ASSERT_NE(entry->plugin, nullptr) << name;
    EXPECT_EQ(entry->plugin->name, "metrics") << name;
    EXPECT_FALSE(entry->decl.doc.empty()) << name;
    for (const auto& spec : entry->decl.params) EXPECT_FALSE(spec.doc.empty()) << name << "." << spec.name;
    EXPECT_EQ(make_metric(name)->direction(), Direction::lower_is_better) << name;
  }
  const Params w2 = testing::default_params(registry, Kind::metric, "wasserstein");
  EXPECT_EQ(w2.integer("max_points"), 2000);
  const Params sw = testing::default_params(registry, Kind::metric, "sliced_wasserstein");
  EXPECT_EQ(sw.integer("projections"), 256);
  EXPECT_EQ(sw.integer("seed"), 0);
  const Params mmd = testing::default_params(registry, Kind::metric, "mmd");
  EXPECT_EQ(mmd.real_list("bandwidths"), (std::vector<double>{0.1, 0.2, 0.5, 1.0, 2.0}));
  EXPECT_EQ(mmd.integer("max_points"), 4000);
}

TEST(MetricsPoints, BadParametersAreConfigErrorsNamingTheKey) {
  auto error_of = [](const std::string& type, const std::string& line) -> std::string {
    const std::string text = "[dataset]\ntype = \"toy2d\"\n[model]\ntype = \"mlp\"\n[[metric]]\ntype = \"" +
                             type + "\"\n" + line + "\n";
    try {
      parse_config(text, "bad.toml", testing::builtin_registry(), {});
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  struct Case {
    std::string type, line, key, says;
  };
  const std::vector<Case> bad = {
      {"sliced_wasserstein", "projections = 0", "projections", ">= 1"},
      {"sliced_wasserstein", "seed = -1", "seed", ">= 0"},
      {"wasserstein", "max_points = 1", "max_points", ">= 2"},
      {"mmd", "max_points = 1", "max_points", ">= 2"},
      {"mmd", "bandwidths = []", "bandwidths", "at least 1"},
      {"mmd", "bandwidths = [0.5, 0.0]", "bandwidths", "> 0"},
      {"mmd", "bandwidths = [-1.0]", "bandwidths", "> 0"},
  };
  for (const Case& c : bad) {
    const std::string message = error_of(c.type, c.line);
    EXPECT_NE(message.find(c.key), std::string::npos) << c.line << ": " << message;
    EXPECT_NE(message.find(c.says), std::string::npos) << c.line << ": " << message;
  }
  EXPECT_EQ(error_of("sliced_wasserstein", "projections = 1\nseed = 7"), "");
  EXPECT_EQ(error_of("wasserstein", "max_points = 2"), "");
  EXPECT_EQ(error_of("mmd", "bandwidths = [0.3]\nmax_points = 2"), "");
}

TEST(MetricsPoints, BadInputsAreOneLineInputErrorsNamingTheMetric) {
  auto x = torch::randn({10, 3});
  for (const std::string& name : kPointMetrics) {
    auto metric = make_metric(name);
    auto message_of = [&](const torch::Tensor& generated, const torch::Tensor& reference) -> std::string {
      try {
        score(*metric, generated, reference);
      } catch (const InputError& e) {
        return e.what();
      }
      return "no InputError";
    };
    for (const std::string& message :
         {message_of(x, torch::Tensor()), message_of(torch::Tensor(), x), message_of(torch::zeros({0, 3}), x),
          message_of(x, torch::zeros({0, 3})), message_of(x, torch::randn({10, 2})),
          message_of(torch::zeros({4, 0}), torch::zeros({4, 0}))}) {
      EXPECT_EQ(message.rfind(name + ": ", 0), 0u) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
    EXPECT_NE(message_of(x, torch::randn({10, 2})).find("3 values"), std::string::npos);

    // A diverged model's samples score NaN (written as null), with the bad rows counted: the
    // evaluation of the other metrics goes on.
    auto broken = x.clone();
    broken[4][1] = std::numeric_limits<float>::quiet_NaN();
    broken[7][0] = std::numeric_limits<float>::infinity();
    const MetricResult result = score(*metric, broken, x);
    EXPECT_TRUE(std::isnan(result.value)) << name;
    EXPECT_EQ(result.details.at("non_finite_rows"), 2.0) << name;
  }
  // One sample of a set is enough for the two Wasserstein distances, not for the unbiased MMD.
  EXPECT_NEAR(score(*make_metric("wasserstein"), x.narrow(0, 0, 1), x.narrow(0, 1, 1)).value,
              (x[0].to(torch::kDouble) - x[1].to(torch::kDouble)).norm().item<double>(), 1e-12);
  EXPECT_THROW(score(*make_metric("mmd"), x.narrow(0, 0, 1), x), InputError);
}

// ---------------------------------------------------------------------------------------------
// wasserstein

TEST(MetricsPointsWasserstein, MatchesBruteForceOverAllPermutations) {
  auto metric = make_metric("wasserstein");
  at::Generator gen = generator(1);
  for (int trial = 0; trial < 24; ++trial) {
    const std::int64_t dims = 1 + trial % 4;
    auto x = torch::randn({6, dims}, gen), y = torch::randn({6, dims}, gen) * 1.5 + 0.3;
    const MetricResult r = score(*metric, x, y);
    const double expected = brute_force_w2(x, y);
    EXPECT_NEAR(r.value, expected, 1e-9 * (1 + expected)) << "trial " << trial;
    EXPECT_EQ(r.details.at("n"), 6.0);
    EXPECT_NEAR(r.details.at("mean_squared_cost"), expected * expected, 1e-9 * (1 + expected * expected));
  }
  // Far apart clouds (the solver works on centred copies; the value is measured on the points).
  auto x = torch::randn({6, 2}, gen), y = torch::randn({6, 2}, gen) + 1000.0;
  EXPECT_NEAR(score(*metric, x, y).value, brute_force_w2(x, y), 1e-9 * brute_force_w2(x, y));

  // Images are flattened; unequal sets use the first min(N, M) of each, max_points caps that.
  auto images = torch::randn({9, 1, 2, 2}, gen), other = torch::randn({6, 1, 2, 2}, gen);
  EXPECT_NEAR(score(*metric, images, other).value, brute_force_w2(images.narrow(0, 0, 6), other), 1e-9);
  auto capped = make_metric("wasserstein", {{"max_points", std::int64_t{4}}});
  const MetricResult four = score(*capped, images, other);
  EXPECT_NEAR(four.value, brute_force_w2(images.narrow(0, 0, 4), other.narrow(0, 0, 4)), 1e-9);
  EXPECT_EQ(four.details.at("n"), 4.0);
  EXPECT_EQ(score(*metric, x, x).value, 0.0);

  // squared = true reports W2^2 of the same matching.
  auto squared = make_metric("wasserstein", {{"squared", true}});
  auto a = torch::randn({6, 2}, gen), b = torch::randn({6, 2}, gen) * 2.0;
  const double w2 = brute_force_w2(a, b);
  EXPECT_NEAR(score(*squared, a, b).value, w2 * w2, 1e-9 * (1 + w2 * w2));
}

TEST(MetricsPointsWasserstein, ShiftedGaussiansApproachTheShift) {
  // W2(N(0, I), N(m, I)) = |m|. Between two samples, W2^2 = |mean difference|^2 + W2^2 of the
  // centred sets (every matching moves the mean alike). The sample means differ from m by
  // sqrt(2 / n) = 0.045 per axis (one standard deviation) and the centred sets are the 2D floor
  // apart (about 0.2, see MetricsPointsMeaning), which adds 0.007: 0.15 is over 3 standard
  // deviations of the first and covers the second.
  auto metric = make_metric("wasserstein");
  at::Generator gen = generator(2);
  auto x = torch::randn({1000, 2}, gen), y = torch::randn({1000, 2}, gen) + torch::tensor({3.0, 0.0});
  const MetricResult r = score(*metric, x, y);
  std::printf("W2 between N(0, I) and N((3, 0), I) samples of 1000: %.4f\n", r.value);
  EXPECT_LT(std::abs(r.value - 3.0), 0.15) << r.value;
  EXPECT_EQ(r.details.at("n"), 1000.0);
  EXPECT_NEAR(r.details.at("mean_squared_cost"), r.value * r.value, 1e-9);
}

// The coupling `minibatch_ot` and the metric share the solver: the coupling's pairing costs what
// the metric reports, and no pairing of the same rows found by chance costs less.
TEST(MetricsPointsWasserstein, SharesTheSolverWithMinibatchOt) {
  const Registry& registry = testing::builtin_registry();
  auto coupling = registry.create<Coupling>(
      "minibatch_ot", testing::default_params(registry, Kind::coupling, "minibatch_ot"), BuildContext{});
  auto metric = make_metric("wasserstein");
  at::Generator gen = generator(3);
  Batch noise{torch::randn({256, 3}, gen), {}}, data{torch::randn({256, 3}, gen) * 0.5 + 1.0, {}};
  auto [paired_noise, paired_data] = coupling->couple(noise, data, gen);
  auto mean_cost = [](const torch::Tensor& a, const torch::Tensor& b) {
    return (a.to(torch::kDouble) - b.to(torch::kDouble)).square().sum(1).mean().item<double>();
  };
  const double coupled = mean_cost(paired_noise.x, paired_data.x);
  const MetricResult r = score(*metric, noise.x, data.x);
  EXPECT_NEAR(r.details.at("mean_squared_cost"), coupled, 1e-9);
  for (int k = 0; k < 20; ++k) {
    const auto perm = torch::randperm(256, gen);
    EXPECT_GE(mean_cost(noise.x.index_select(0, perm), data.x), coupled);
  }
}

// ---------------------------------------------------------------------------------------------
// sliced_wasserstein

TEST(MetricsPointsSliced, SameSeedSameValueOtherSeedOtherDirections) {
  at::Generator gen = generator(4);
  auto x = torch::randn({500, 5}, gen), y = torch::randn({400, 5}, gen) * 1.2;
  auto a = make_metric("sliced_wasserstein"), b = make_metric("sliced_wasserstein");
  const MetricResult first = score(*a, x, y);
  EXPECT_EQ(score(*a, x, y).value, first.value);  // the same instance again
  EXPECT_EQ(score(*b, x, y).value, first.value);  // another instance, same seed
  EXPECT_EQ(first.details.at("projections"), 256.0);
  EXPECT_GE(first.details.at("max_projection_w2"), first.value);
  // The engine's generator is not what it draws from.
  MetricInput input;
  input.generated = x;
  input.reference = y;
  at::Generator engine_gen = generator(99);
  input.generator = &engine_gen;
  EXPECT_EQ(a->compute(input).value, first.value);
  auto reseeded = make_metric("sliced_wasserstein", {{"seed", std::int64_t{1}}});
  const double other = score(*reseeded, x, y).value;
  EXPECT_NE(other, first.value);
  EXPECT_NEAR(other, first.value, 0.2 * first.value);  // another estimate of the same quantity
}

TEST(MetricsPointsSliced, OneDimensionIsTheExactW2) {
  // In 1D every direction is +-1 and sorting is the optimal matching: the sliced distance is W2.
  auto sliced = make_metric("sliced_wasserstein", {{"projections", std::int64_t{7}}});
  auto exact = make_metric("wasserstein");
  at::Generator gen = generator(5);
  auto x = torch::randn({500, 1}, gen), y = torch::rand({500, 1}, gen) * 3.0;
  EXPECT_NEAR(score(*sliced, x, y).value, score(*exact, x, y).value, 1e-9);
  auto flat = torch::randn({500}, gen);  // [N] samples are points of one value each
  EXPECT_NEAR(score(*sliced, flat, y).value, score(*exact, flat, y).value, 1e-9);

  // Unequal sizes match quantiles with every point kept: a set of M points and the same points
  // each repeated twice are the same measure, so comparing 2M points with either gives one value,
  // the exact W2 against the doubled set in 1D.
  auto big = torch::randn({600, 1}, gen), small = torch::randn({300, 1}, gen) + 0.5;
  const double unequal = score(*sliced, big, small).value;
  EXPECT_NEAR(unequal, score(*exact, big, small.repeat_interleave(2, 0)).value, 1e-9);
  auto cloud = torch::randn({600, 4}, gen), half = torch::randn({300, 4}, gen) * 0.7;
  auto sliced4 = make_metric("sliced_wasserstein");
  EXPECT_NEAR(score(*sliced4, cloud, half).value, score(*sliced4, cloud, half.repeat({2, 1})).value, 1e-9);
  EXPECT_NEAR(score(*sliced4, half, cloud).value, score(*sliced4, half.repeat({2, 1}), cloud).value, 1e-9);
  // Sizes 900 and 600 holding the same measure (a set repeated 3 and 2 times): 0.
  EXPECT_NEAR(score(*sliced, small.repeat({3, 1}), small.repeat({2, 1})).value, 0.0, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// mmd

TEST(MetricsPointsMmd, MatchesTheUStatisticComputedDirectly) {
  at::Generator gen = generator(6);
  // Sizes that cross the 1024-row blocks.
  auto x = torch::randn({1100, 2}, gen), y = torch::randn({1030, 2}, gen) * 1.1 + 0.1;
  auto metric = make_metric("mmd");
  const MetricResult r = score(*metric, x, y);
  const double expected = direct_mmd2(x, y, {0.1, 0.2, 0.5, 1.0, 2.0});
  EXPECT_NEAR(r.value, expected, 1e-9);
  EXPECT_NEAR(r.details.at("mmd"), std::sqrt(std::max(expected, 0.0)), 1e-9);
  EXPECT_EQ(r.details.at("generated_n"), 1100.0);
  EXPECT_EQ(r.details.at("reference_n"), 1030.0);
  EXPECT_NEAR(score(*metric, y, x).value, r.value, 1e-9);  // symmetric

  // Other bandwidths, and max_points keeping the first rows.
  auto custom =
      make_metric("mmd", {{"bandwidths", std::vector<double>{0.7, 3.0}}, {"max_points", std::int64_t{300}}});
  EXPECT_NEAR(score(*custom, x, y).value, direct_mmd2(x.narrow(0, 0, 300), y.narrow(0, 0, 300), {0.7, 3.0}),
              1e-9);
  // Far from the origin: distances, and so the value, are unchanged.
  auto near = x.narrow(0, 0, 300).to(torch::kDouble), near_y = y.narrow(0, 0, 300).to(torch::kDouble);
  EXPECT_NEAR(score(*metric, near + 1e5, near_y + 1e5).value, score(*metric, near, near_y).value, 1e-9);
  // Images are flattened.
  auto images = torch::randn({40, 1, 2, 2}, gen), other = torch::randn({30, 1, 2, 2}, gen) + 0.3;
  EXPECT_NEAR(score(*metric, images, other).value,
              direct_mmd2(images.reshape({40, 4}), other.reshape({30, 4}), {0.1, 0.2, 0.5, 1.0, 2.0}), 1e-9);
  // The estimate is unbiased, so it can fall below 0 for equal distributions: reported as is,
  // while "mmd" stays a distance.
  bool negative_seen = false;
  for (int k = 0; k < 10 && !negative_seen; ++k) {
    const MetricResult same = score(*metric, torch::randn({200, 2}, gen), torch::randn({200, 2}, gen));
    if (same.value < 0) {
      negative_seen = true;
      EXPECT_EQ(same.details.at("mmd"), 0.0);
    }
  }
  EXPECT_TRUE(negative_seen);
}

// ---------------------------------------------------------------------------------------------
// What each metric measures: two fresh samples of the standard 2D Gaussian score near 0, and the
// score grows strictly as one of them is shifted by 0, 0.25, 0.5, 1, 2 along the first axis.
//
// The blur (Gaussian noise of std 0, 0.1, 0.3, 0.6 added to one sample) is tested on four tight
// clusters (std 0.05, equal counts), not on the standard Gaussian: blurring N(0, I) by 0.1 makes
// it N(0, 1.01 I), W2 = 0.007 away, while two samples of 1000 points are 0.2 apart in W2 by
// chance; over 10 seeds every metric ranked the 0.1 blur above the unblurred sample only 5 to 7
// times. On the clusters a 0.1 blur doubles their width, which every metric sees at every seed
// tried (20 seeds: the smallest step was 40% of the larger value).

struct Meaning {
  std::string metric;
  std::int64_t n;     // points per set for the shift
  double same_bound;  // two samples of N(0, I) score below it in absolute value
};

void check_meaning(const Meaning& m) {
  auto metric = make_metric(m.metric);
  at::Generator gen = generator(7);
  auto x = torch::randn({m.n, 2}, gen), y = torch::randn({m.n, 2}, gen);
  std::vector<double> shifted;
  for (double shift : {0.0, 0.25, 0.5, 1.0, 2.0})
    shifted.push_back(score(*metric, x, y + torch::tensor({shift, 0.0})).value);
  EXPECT_LT(std::abs(shifted[0]), m.same_bound) << m.metric;
  for (std::size_t i = 1; i < shifted.size(); ++i)
    EXPECT_GT(shifted[i], shifted[i - 1]) << m.metric << ": shift step " << i;

  const std::int64_t n = 1000;
  auto a = clusters(n, gen), b = clusters(n, gen), noise = torch::randn({n, 2}, gen);
  std::vector<double> blurred;
  for (double sigma : {0.0, 0.1, 0.3, 0.6}) blurred.push_back(score(*metric, a, b + sigma * noise).value);
  std::printf(
      "%s: shifted by 0, 0.25, 0.5, 1, 2: %.4g %.4g %.4g %.4g %.4g; clusters blurred by 0, 0.1, 0.3, 0.6: "
      "%.4g %.4g %.4g %.4g\n",
      m.metric.c_str(), shifted[0], shifted[1], shifted[2], shifted[3], shifted[4], blurred[0], blurred[1],
      blurred[2], blurred[3]);
  for (std::size_t i = 1; i < blurred.size(); ++i)
    EXPECT_GT(blurred[i], blurred[i - 1]) << m.metric << ": blur step " << i;
}

// Two samples of n points in 2D are matched at a mean squared length of order log(n) / n (Ajtai,
// Komlos & Tusnady 1984), more with the Gaussian's tails: 20 seeds at n = 1000 measured W2 from
// 0.19 to 0.23. 0.3 still lies below a shift of 0.5 (W2 0.49 to 0.53).
TEST(MetricsPointsMeaning, Wasserstein) { check_meaning({"wasserstein", 1000, 0.3}); }

// Each 1D projection compares two samples of 2000 points, W2 of order n^-1/2: 20 seeds measured
// 0.045 to 0.074. 0.1 lies below a shift of 0.25 (0.16 at least: the shift projects to 0.25 / sqrt 2
// in root mean square).
TEST(MetricsPointsMeaning, SlicedWasserstein) { check_meaning({"sliced_wasserstein", 2000, 0.1}); }

// The U-statistic has mean 0 for equal distributions and a spread of order 1/n times the kernel's
// size: 20 seeds at n = 2000 measured |MMD^2| <= 0.0018. 0.005 lies below a shift of 0.25 (0.014 at
// least).
TEST(MetricsPointsMeaning, Mmd) { check_meaning({"mmd", 2000, 0.005}); }

}  // namespace
}  // namespace pathline
