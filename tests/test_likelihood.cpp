// The likelihood metric `nll`: exact against a Gaussian flow whose density is known in closed form
// (at t = 1 and at an earlier t_end), Hutchinson against exact on a nonlinear field, the checkerboard's
// entropy through a real training run with the trained density integrating to 1, and its parameter
// bounds.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "pathline/engine/config.hpp"
#include "pathline/engine/pipeline.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

// Coefficients of the linear path x_t = t x1 + (1 - t) x0.
PathCoefficients linear_path(double t) {
  auto value = [](double v) { return torch::full({1}, v, torch::kFloat64); };
  return {value(t), value(1.0 - t), value(1.0), value(-1.0)};
}

// The exact marginal velocity from x0 ~ N(0, I) to x1 ~ N(mu, s^2 I) on the linear path. The
// marginal p_t is N(t mu, var_t I) with var_t = (1 - t)^2 + t^2 s^2, and the affine map
// x = t mu + sqrt(var_t) z carries it along, so
//   v(x, t) = mu + (var_t' / (2 var_t)) (x - t mu),   var_t' / 2 = t s^2 - (1 - t).
class GaussianFlow : public VectorField {
 public:
  GaussianFlow(torch::Tensor mu, double s) : mu_(std::move(mu)), s_(s) {}

  torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override {
    if (q != Quantity::velocity) throw Error("GaussianFlow gives only the velocity");
    const double var = variance(t), rate = (t * s_ * s_ - (1.0 - t)) / var;
    const torch::Tensor mu = mu_.to(x.scalar_type());
    return mu + rate * (x - t * mu);
  }
  PathCoefficients coefficients(double t) const override { return linear_path(t); }

  double variance(double t) const { return (1.0 - t) * (1.0 - t) + t * t * s_ * s_; }
  // -log N(x; t mu, var_t I): the true NLL of one point under p_t.
  double nll(const torch::Tensor& x, double t) const {
    const double var = variance(t);
    const double squared = (x.to(torch::kFloat64) - t * mu_).pow(2).sum().item<double>();
    return squared / (2.0 * var) + 0.5 * static_cast<double>(x.numel()) * std::log(2.0 * M_PI * var);
  }

 private:
  torch::Tensor mu_;  // [D] float64
  double s_;
};

// A small random tanh network of (x, t) as a velocity: nonlinear, with a Jacobian that is neither
// symmetric nor constant, so that Hutchinson's estimate has a real variance.
class RandomNetworkFlow : public VectorField {
 public:
  explicit RandomNetworkFlow(std::int64_t dims) {
    torch::manual_seed(3);
    net_ = torch::nn::Sequential(torch::nn::Linear(dims + 1, 32), torch::nn::Tanh(),
                                 torch::nn::Linear(32, 32), torch::nn::Tanh(), torch::nn::Linear(32, dims));
  }

  torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override {
    if (q != Quantity::velocity) throw Error("RandomNetworkFlow gives only the velocity");
    return net_->forward(torch::cat({x, torch::full({x.size(0), 1}, t, x.options())}, 1));
  }
  PathCoefficients coefficients(double t) const override { return linear_path(t); }

 private:
  torch::nn::Sequential net_{nullptr};
};

MetricResult nll_of(VectorField& field, const torch::Tensor& points,
                    const std::map<std::string, ParamValue>& params, double t_end = 1.0,
                    std::uint64_t seed = 1) {
  auto metric = testing::builtin_registry().create<Metric>(
      "nll", testing::default_params(testing::builtin_registry(), Kind::metric, "nll", params), {});
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  MetricInput input;
  input.reference = points;
  input.field = &field;
  input.t_start = 0.0;
  input.t_end = t_end;
  input.generator = &gen;
  EXPECT_EQ(metric->direction(), Direction::lower_is_better);
  return metric->compute(input);
}

TEST(Likelihood, ExactDivergenceGivesTheGaussianDensity) {
  GaussianFlow flow(torch::tensor({1.5, -0.5}, torch::kFloat64), 0.6);
  const torch::Tensor points =
      torch::tensor({{1.5, -0.5}, {2.0, 0.3}, {0.2, -1.4}, {-1.0, 2.0}, {3.1, 0.9}}, torch::kFloat32);
  double largest = 0.0;
  for (std::int64_t i = 0; i < points.size(0); ++i) {
    const torch::Tensor x = points.narrow(0, i, 1);
    MetricResult r = nll_of(flow, x, {{"estimator", std::string("exact")}});
    EXPECT_NEAR(r.value, flow.nll(x, 1.0), 1e-3) << "point " << i;
    largest = std::max(largest, std::abs(r.value - flow.nll(x, 1.0)));
    EXPECT_EQ(r.details.at("dimensions"), 2.0);
    EXPECT_EQ(r.details.count("probes"), 0u);  // exact: no probes
    // With t_end < 1 it is the NLL under p_{t_end}, not under the data.
    MetricResult early = nll_of(flow, x, {{"estimator", std::string("exact")}}, 0.7);
    EXPECT_NEAR(early.value, flow.nll(x, 0.7), 1e-3) << "point " << i;
    largest = std::max(largest, std::abs(early.value - flow.nll(x, 0.7)));
  }
  std::printf("largest error against the closed form: %.2e nats\n", largest);
  // All points at once, in chunks of 2: the mean of the per-point values, and its details.
  double mean = 0.0, square = 0.0;
  for (std::int64_t i = 0; i < 5; ++i) {
    const double v = flow.nll(points.narrow(0, i, 1), 1.0);
    mean += v / 5.0;
    square += v * v / 5.0;
  }
  MetricResult all = nll_of(flow, points, {{"batch_size", std::int64_t{2}}});
  EXPECT_NEAR(all.value, mean, 1e-3);
  EXPECT_NEAR(all.details.at("standard_error"), std::sqrt((square - mean * mean) * 5.0 / 4.0 / 5.0), 1e-3);
  EXPECT_NEAR(all.details.at("bits_per_dim"), mean / (2.0 * std::log(2.0)), 1e-3);
  EXPECT_EQ(all.details.at("n"), 5.0);
  // n = 3 scores the first three only.
  MetricResult first = nll_of(flow, points, {{"n", std::int64_t{3}}});
  EXPECT_EQ(first.details.at("n"), 3.0);
  double first_mean = 0.0;
  for (std::int64_t i = 0; i < 3; ++i) first_mean += flow.nll(points.narrow(0, i, 1), 1.0) / 3.0;
  EXPECT_NEAR(first.value, first_mean, 1e-3);
}

TEST(Likelihood, HutchinsonIsExactOnAnIsotropicLinearField) {
  // The Jacobian of the Gaussian flow is c I; a Rademacher probe gives eps^T (c I) eps = c D exactly.
  GaussianFlow flow(torch::tensor({1.0, 0.0, -1.0}, torch::kFloat64), 1.7);
  torch::manual_seed(0);
  const torch::Tensor points = torch::randn({64, 3});
  MetricResult exact =
      nll_of(flow, points, {{"estimator", std::string("exact")}, {"steps", std::int64_t{20}}});
  MetricResult probe =
      nll_of(flow, points, {{"estimator", std::string("hutchinson")}, {"steps", std::int64_t{20}}});
  EXPECT_NEAR(probe.value, exact.value, 1e-4);
  EXPECT_EQ(probe.details.at("probes"), 1.0);
}

TEST(Likelihood, HutchinsonAgreesWithExactAndTightensWithProbes) {
  // One point repeated: every row's exact NLL is the same, so the spread of the Hutchinson values
  // is the estimator's alone, and its standard error is what tells whether it agrees.
  const std::int64_t dims = 10;
  RandomNetworkFlow flow(dims);
  torch::manual_seed(5);
  const torch::Tensor points = torch::randn({1, dims}).expand({400, dims}).contiguous();
  const std::map<std::string, ParamValue> common = {{"steps", std::int64_t{10}}};
  auto with = [&](std::map<std::string, ParamValue> extra) {
    extra.insert(common.begin(), common.end());
    return nll_of(flow, points, extra);
  };
  MetricResult exact = with({{"estimator", std::string("exact")}});
  EXPECT_LT(exact.details.at("standard_error"), 1e-5);
  MetricResult one = with({{"estimator", std::string("hutchinson")}, {"probes", std::int64_t{1}}});
  MetricResult many = with({{"estimator", std::string("hutchinson")}, {"probes", std::int64_t{16}}});
  const double se1 = one.details.at("standard_error"), se16 = many.details.at("standard_error");
  std::printf("exact %.5f; hutchinson 1 probe %.5f +- %.5f, 16 probes %.5f +- %.5f\n", exact.value, one.value,
              se1, many.value, se16);
  EXPECT_GT(se1, 1e-3);  // the estimator is not exact on this field
  EXPECT_LT(std::abs(one.value - exact.value), 3.0 * se1);
  EXPECT_LT(std::abs(many.value - exact.value), 3.0 * se16);
  // 16 probes: the per-sample variance falls 16-fold, the standard error 4-fold.
  EXPECT_GT(se16, 0.15 * se1);
  EXPECT_LT(se16, 0.4 * se1);
  // auto picks Hutchinson above 8 dimensions (and exact below: see the Gaussian test).
  MetricResult automatic = with({});
  EXPECT_EQ(automatic.details.at("probes"), 1.0);

  // Distinct points in 2D (auto: exact) agree with Hutchinson within its standard error, which
  // here includes the spread of the data.
  RandomNetworkFlow plane(2);
  const torch::Tensor scattered = torch::randn({300, 2});
  MetricResult plane_exact = nll_of(plane, scattered, common);
  EXPECT_EQ(plane_exact.details.count("probes"), 0u);
  MetricResult plane_probe =
      nll_of(plane, scattered, {{"estimator", std::string("hutchinson")}, {"steps", std::int64_t{10}}});
  EXPECT_LT(std::abs(plane_probe.value - plane_exact.value), 3.0 * plane_probe.details.at("standard_error"));
}

TEST(Likelihood, TrainedCheckerboardNearItsEntropyAndNormalized) {
  // The checkerboard is uniform on 8 cells of side 1 / 0.45: differential entropy log(8 / 0.45^2),
  // the least NLL any model can reach on it (the NLL is a cross-entropy). Trained and scored through
  // the engine, so under its inference mode. A model's blurred cell edges and the bridges at the
  // corners cost it the gap: the quickstart (4 x 256, 8000 steps of 1024, 77 s on 2 threads)
  // measured 3.837 +- 0.009 on 2000 points, inside the band [entropy, entropy + 0.25]; 3000 steps
  // gave 3.979, 6000 3.859, 10000 3.817. This 4-second setting measured 4.108; the band here allows
  // for it and still fails an untrained model (8.44) or a Gaussian fitted to the data (4.72).
  testing::TempDir dir;
  const std::string text =
      "[dataset]\ntype = \"toy2d\"\nshape = \"checkerboard\"\n"
      "[path]\ntype = \"linear\"\n"
      "[parameterization]\ntype = \"velocity\"\n"
      "[model]\ntype = \"mlp\"\nwidth = 128\ndepth = 3\nactivation = \"silu\"\n"
      "[train]\nsteps = 1200\nbatch_size = 512\nlr = 5e-3\nlr_schedule = \"cosine\"\nwarmup_steps = 50\n"
      "log_every = 100\n"
      "[solver]\ntype = \"midpoint\"\nsteps = 10\n"
      "[sample]\nn = 200\ntrajectories = 0\n"
      "[eval]\nreference_n = 2000\n"
      "[[metric]]\ntype = \"nll\"\nsteps = 10\n"
      "[run]\nthreads = 1\n";
  const Registry& registry = testing::builtin_registry();
  PipelineConfig config = parse_config(text, "checkerboard.toml", registry, {});
  run_job(config, registry, JobOptions{dir / "run", true, true}, nullptr);
  auto summary = nlohmann::json::parse(testing::read_text(dir / "run/summary.json"));
  const double nll = summary["metrics"]["nll"].get<double>();
  const auto& details = summary["metric_details"]["nll"]["details"];
  const double entropy = std::log(8.0 / (0.45 * 0.45));
  std::printf("checkerboard nll %.4f +- %.4f (entropy %.4f)\n", nll, details["standard_error"].get<double>(),
              entropy);
  EXPECT_GE(nll, entropy);
  EXPECT_LE(nll, entropy + 0.6);
  EXPECT_EQ(details["n"].get<double>(), 2000.0);
  EXPECT_EQ(details["dimensions"].get<double>(), 2.0);
  EXPECT_NEAR(details["bits_per_dim"].get<double>(), nll / (2.0 * std::log(2.0)), 1e-9);
  EXPECT_EQ(summary["metric_details"]["nll"]["direction"], "lower");

  // The density the metric reads off is normalized: exp(-nll) over a grid covering the data sums to
  // 1. A wrong source term, or a divergence of the wrong sign or scale, shifts the log-density and
  // shows here as a factor far from 1.
  PipelineConfig saved = load_config(dir / "run/config.toml", registry, {});
  Components c = build_components(saved, registry);
  load_weights(*c.model, dir / "run/model.safetensors");
  c.model->eval();
  ModelField field(*c.model, *c.path, *c.parameterization, 2);
  const double h = 0.6;  // cells of 0.6 x 0.6 over [-6, 6]^2; the data lies in [-4.45, 4.45]^2
  double mass = 0.0;
  for (int i = 0; i < 20; ++i)
    for (int j = 0; j < 20; ++j) {
      const torch::Tensor point =
          torch::tensor({{-6.0 + (i + 0.5) * h, -6.0 + (j + 0.5) * h}}, torch::kFloat32);
      mass += std::exp(-nll_of(field, point, {{"steps", std::int64_t{5}}}).value) * h * h;
    }
  std::printf("model density summed over the grid: %.5f\n", mass);
  EXPECT_NEAR(mass, 1.0, 0.02);
}

TEST(Likelihood, QuickstartModelIsWithinAQuarterNatOfTheCheckerboardEntropy) {
  // The check against the truth, on the shipped quickstart as a user runs it (8000 steps,
  // about 75 s on 2 threads): its own nll entry scores 2000 fresh data points. Measured 3.837 +- 0.009;
  // 3000 steps scored 3.979 and would fail.
  testing::TempDir dir;
  const std::string quickstart = std::string(PATHLINE_SOURCE_DIR) + "/configs/quickstart.toml";
  auto r = testing::run_cli("run '" + quickstart + "' --run-dir '" + (dir / "q").string() +
                            "' --set sample.n=2000 --set sample.trajectories=0");
  ASSERT_EQ(r.code, 0) << r.err;
  auto summary = nlohmann::json::parse(testing::read_text(dir / "q/summary.json"));
  const double nll = summary["metrics"]["nll"].get<double>();
  const double se = summary["metric_details"]["nll"]["details"]["standard_error"].get<double>();
  const double entropy = std::log(8.0 / (0.45 * 0.45));
  std::printf("quickstart nll %.4f +- %.4f (entropy %.4f, band up to %.4f)\n", nll, se, entropy,
              entropy + 0.25);
  EXPECT_GE(nll, entropy);
  EXPECT_LE(nll, entropy + 0.25);
  EXPECT_LT(se, 0.02);
  EXPECT_EQ(summary["metric_details"]["nll"]["details"]["n"].get<double>(), 2000.0);
  EXPECT_LT(summary["metrics"]["energy_distance"].get<double>(), 0.01);
}

TEST(Likelihood, BadParametersAreConfigErrorsNamingTheKey) {
  const std::string base =
      "[dataset]\ntype = \"toy2d\"\n[model]\ntype = \"mlp\"\n[[metric]]\ntype = \"nll\"\n";
  auto error_of = [&](const std::string& line) -> std::string {
    try {
      parse_config(base + line + "\n", "bad.toml", testing::builtin_registry(), {});
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  const std::string estimator = error_of("estimator = \"skilling\"");
  EXPECT_NE(estimator.find("estimator"), std::string::npos) << estimator;
  EXPECT_NE(estimator.find("skilling"), std::string::npos) << estimator;
  for (std::string key : {"probes", "steps"}) {
    const std::string message = error_of(key + " = 0");
    EXPECT_NE(message.find(key), std::string::npos) << message;
    EXPECT_NE(message.find(">= 1"), std::string::npos) << message;
  }
  EXPECT_EQ(error_of("probes = 4\nsteps = 10\nestimator = \"hutchinson\""), "");
}

}  // namespace
}  // namespace pathline
