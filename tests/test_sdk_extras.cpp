// What SDK ABI 5 opened: paths that draw their own x_t (Path::sample; the stochastic interpolant
// trains and samples), named extra tensors in a condition (a data set's Batch::extras reach the model),
// the flow's space in the build context, and the source's density in the likelihood.
#include <cmath>
#include <nlohmann/json.hpp>

#include "pathline/engine/config.hpp"
#include "pathline/engine/pipeline.hpp"
#include "pathline/engine/train.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

using testing::TempDir;

std::shared_ptr<Path> interpolant(const std::map<std::string, ParamValue>& params) {
  const Registry& r = testing::builtin_registry();
  return r.create<Path>("stochastic_interpolant",
                        testing::default_params(r, Kind::path, "stochastic_interpolant", params), {});
}

TEST(StochasticInterpolant, DrawsAroundTheAffineMeanWithGammaSpreadAndItsVelocityIsTheTimeDerivative) {
  for (const std::string gamma : {"quadratic", "sqrt"})
    for (const std::string kind : {"linear", "trig"}) {
      SCOPED_TRACE(gamma + ", " + kind);
      auto path = interpolant({{"gamma", gamma}, {"interpolant", kind}, {"gamma_scale", 2.0}});
      EXPECT_FALSE(path->affine());
      const std::int64_t n = 200000;
      const double t = 0.3;
      const torch::Tensor x0 = torch::full({n, 2}, -1.0, torch::kFloat64);
      const torch::Tensor x1 = torch::full({n, 2}, 3.0, torch::kFloat64);
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
      const PathSample s = path->sample(x0, x1, torch::full({n}, t, torch::kFloat64), gen);
      const PathCoefficients c = path->coefficients(torch::full({1}, t, torch::kFloat64));
      const double alpha = c.alpha.item<double>(), sigma = c.sigma.item<double>();
      const double g = gamma == "quadratic" ? 2.0 * t * (1 - t) : std::sqrt(2.0 * t * (1 - t));
      EXPECT_NEAR(s.x_t.mean().item<double>(), 3.0 * alpha - sigma, 0.01);
      EXPECT_NEAR(s.x_t.std().item<double>(), g, 0.01);
      // The same z at t +- h (the same generator state): the central difference of x_t is the target.
      const double h = 1e-5;
      auto at_time = [&](double time) {
        at::Generator same = at::make_generator<at::CPUGeneratorImpl>(5);
        return path->sample(x0.narrow(0, 0, 1000), x1.narrow(0, 0, 1000),
                            torch::full({1000}, time, torch::kFloat64), same);
      };
      const torch::Tensor difference = (at_time(t + h).x_t - at_time(t - h).x_t) / (2 * h);
      EXPECT_LT((difference - at_time(t).velocity).abs().max().item<double>(), 1e-5);
    }
  // gamma_scale = 0 is the affine path's draw exactly.
  auto plain = interpolant({{"gamma_scale", 0.0}});
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const torch::Tensor x0 = torch::randn({64, 3}, torch::kFloat64),
                      x1 = torch::randn({64, 3}, torch::kFloat64);
  const torch::Tensor t = torch::rand({64}, torch::kFloat64);
  const PathSample s = plain->sample(x0, x1, t, gen);
  const PathCoefficients c = plain->coefficients(t).broadcast_to_rank(2);
  EXPECT_TRUE(torch::allclose(s.x_t, Path::interpolate(c, x0, x1)));
  EXPECT_TRUE(torch::allclose(s.velocity, Path::conditional_velocity(c, x0, x1)));
}

PipelineConfig toy(const std::string& path_table, const std::vector<std::string>& overrides = {}) {
  const std::string text =
      "[dataset]\ntype = \"toy2d\"\nshape = \"8gaussians\"\n"
      "[model]\ntype = \"mlp\"\nwidth = 64\ndepth = 2\n"
      "[train]\nsteps = 800\nbatch_size = 256\nlr = 3e-3\n"
      "[solver]\ntype = \"midpoint\"\nsteps = 20\n"
      "[sample]\nn = 1000\ntrajectories = 0\n"
      "[[metric]]\ntype = \"energy_distance\"\n"
      "[run]\nthreads = 1\n" +
      path_table;
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(text, "si.toml", testing::builtin_registry(), options);
}

double energy_of(const PipelineConfig& config, const std::filesystem::path& dir) {
  run_job(config, testing::builtin_registry(), JobOptions{dir, true, true}, nullptr);
  return nlohmann::json::parse(testing::read_text(dir / "summary.json"))["metrics"]["energy_distance"]
      .get<double>();
}

TEST(StochasticInterpolant, TrainsAndSamplesAsWellAsTheLinearPath) {
  TempDir dir;
  const double untrained =
      energy_of(toy("[path]\ntype = \"stochastic_interpolant\"\n", {"train.steps=0"}), dir / "u");
  const double linear = energy_of(toy("[path]\ntype = \"linear\"\n"), dir / "linear");
  const double si =
      energy_of(toy("[path]\ntype = \"stochastic_interpolant\"\ngamma_scale = 1.0\n"), dir / "si");
  std::printf("energy distance: untrained %.4f, linear %.4f, stochastic interpolant %.4f\n", untrained,
              linear, si);
  EXPECT_GT(untrained, 0.5);
  EXPECT_LT(si, 0.1);
  EXPECT_LT(si, 3 * linear + 0.01);
}

TEST(StochasticInterpolant, RefusesWhatOnlyAnAffinePathGives) {
  auto error_of = [](const std::string& override) {
    try {
      std::vector<std::string> overrides;
      if (!override.empty()) overrides.push_back(override);
      build_components(toy("[path]\ntype = \"stochastic_interpolant\"\n", overrides),
                       testing::builtin_registry());
    } catch (const ConfigError& e) {
      return e.problems().front();
    }
    return std::string();
  };
  const std::string noise = error_of("parameterization.type=noise");
  EXPECT_CONTAINS(noise, "--set parameterization.type=noise");
  EXPECT_CONTAINS(noise,
                  "[parameterization] (type 'noise') predicts the noise, but path 'stochastic_interpolant' "
                  "is not affine");
  const std::string solver = error_of("solver.type=dpmpp_2m");
  EXPECT_CONTAINS(solver, "[solver] (type 'dpmpp_2m') asks for the data");
  EXPECT_EQ(error_of(""), "");
}

// A labelled data set whose batches carry an extra tensor (each row's label, as floats), and a model
// that records what it was given: the extra must reach it row for row beside the labels.
class ExtrasData final : public Dataset {
 public:
  ExtrasData(const Params&, const BuildContext&) {}
  DataInfo info() const override {
    DataInfo info;
    info.shape = {2};
    info.num_classes = 3;
    return info;
  }
  Batch sample(std::int64_t n, at::Generator& gen) override {
    Batch b;
    b.x = torch::randn({n, 2}, gen);
    b.labels = torch::randint(3, {n}, gen, torch::kInt64);
    b.extras["label_copy"] = b.labels.to(torch::kFloat32).unsqueeze(1);  // [n, 1]
    return b;
  }
};

struct Seen {
  std::vector<std::string> names;
  std::int64_t calls = 0, rows = 0, paired = 0;
};
Seen g_seen;

class ExtrasModel final : public Model {
 public:
  ExtrasModel(const Params&, const BuildContext& ctx) {
    layer_ =
        register_module("layer", torch::nn::Linear(ctx.flow_space().numel() + 1, ctx.flow_space().numel()));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const Condition& condition) override {
    ++g_seen.calls;
    g_seen.names.clear();
    for (const auto& [name, tensor] : condition.extras) g_seen.names.push_back(name);
    if (const torch::Tensor* copy = condition.extra("label_copy")) {
      g_seen.rows = copy->size(0);
      // Rows whose label was not dropped must carry that label in the extra.
      const torch::Tensor labels = condition.labels.to(torch::kFloat32);
      const torch::Tensor kept = condition.labels != kNullLabel;
      if (torch::equal(labels.masked_select(kept), copy->squeeze(1).masked_select(kept))) ++g_seen.paired;
    }
    return layer_->forward(torch::cat({x, t.reshape({-1, 1}).to(x.dtype())}, 1));
  }

 private:
  torch::nn::Linear layer_{nullptr};
};

TEST(Conditions, ADataSetsExtrasReachTheModelRowForRowInEveryMicroBatch) {
  Registry registry = testing::builtin_registry();
  StagingRegistrar staging(std::make_shared<PluginInfo>(PluginInfo{"extras-test", "1.0", {}, "explicit"}));
  staging.add_type<Dataset, ExtrasData>({"extras_data", "labelled points with a label_copy extra", {}});
  staging.add_type<Model, ExtrasModel>({"extras_model", "records the extras", {}});
  staging.commit(registry);
  for (const std::string accumulate : {"1", "2"}) {
    SCOPED_TRACE("accumulate " + accumulate);
    const std::string text =
        "[dataset]\ntype = \"extras_data\"\n[model]\ntype = \"extras_model\"\n"
        "[train]\nsteps = 2\nbatch_size = 10\nlabel_dropout = 0.3\naccumulate = " +
        accumulate + "\n[run]\nthreads = 1\n";
    PipelineConfig config = parse_config(text, "extras.toml", registry, {});
    Components c = build_components(config, registry);
    Trainer trainer(config, c);
    g_seen = {};
    trainer.step();
    trainer.step();
    EXPECT_EQ(g_seen.names, std::vector<std::string>{"label_copy"});
    EXPECT_EQ(g_seen.rows, accumulate == "1" ? 10 : 5);  // the micro-batch's rows
    EXPECT_EQ(g_seen.calls, accumulate == "1" ? 2 : 4);
    EXPECT_EQ(g_seen.paired, g_seen.calls);
  }
}

// The likelihood starts from the source's own density: a source N(0, 4 I) with a field that does
// not move (v = 0 on the linear path from t = 0, where sigma = 1) gives -log N(x; 0, 4 I).
class WideGaussian final : public Dataset {
 public:
  WideGaussian(const Params&, const BuildContext&) {}
  DataInfo info() const override {
    DataInfo info;
    info.shape = {2};
    return info;
  }
  Batch sample(std::int64_t n, at::Generator& gen) override { return {2 * torch::randn({n, 2}, gen), {}}; }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    const torch::Tensor flat = x.to(torch::kFloat64).reshape({x.size(0), -1});
    return -flat.square().sum(1) / 8.0 - std::log(2.0 * M_PI * 4.0);
  }
};

class Still final : public VectorField {
 public:
  torch::Tensor predict(Quantity, const torch::Tensor& x, double) override { return 0 * x; }
  PathCoefficients coefficients(double t) const override {
    auto value = [](double v) { return torch::full({1}, v, torch::kFloat64); };
    return {value(t), value(1.0 - t), value(1.0), value(-1.0)};
  }
};

TEST(Likelihood, StartsFromTheSourcesOwnDensity) {
  const Registry& r = testing::builtin_registry();
  auto metric = r.create<Metric>(
      "nll", testing::default_params(r, Kind::metric, "nll", {{"steps", std::int64_t{4}}}), {});
  const torch::Tensor points = torch::tensor({{1.0, 2.0}, {-0.5, 0.0}}, torch::kFloat64);
  Still field;
  MetricInput input;
  input.reference = points;
  input.field = &field;
  input.t_start = 0.0;
  input.t_end = 1.0;
  WideGaussian wide({}, {});
  input.source = &wide;
  const double expected = (points.square().sum(1) / 8.0 + std::log(8.0 * M_PI)).mean().item<double>();
  EXPECT_NEAR(metric->compute(input).value, expected, 1e-9);
  // Without a source (a direct call), N(0, I).
  input.source = nullptr;
  const double standard = (points.square().sum(1) / 2.0 + std::log(2.0 * M_PI)).mean().item<double>();
  EXPECT_NEAR(metric->compute(input).value, standard, 1e-9);
  // A source without a density cannot be scored.
  ExtrasData no_density({}, {});
  input.source = &no_density;
  EXPECT_CONTAINS(testing::input_error_of([&] { metric->compute(input); }),
                  "nll: the [source] has no density");
}

TEST(Likelihood, ASourceWithoutADensityIsRefusedBeforeTraining) {
  const std::string text =
      "[dataset]\ntype = \"toy2d\"\n[source]\ntype = \"toy2d\"\nshape = \"8gaussians\"\n"
      "[model]\ntype = \"mlp\"\n[[metric]]\ntype = \"nll\"\n";
  try {
    check_pipeline(parse_config(text, "nll.toml", testing::builtin_registry()), testing::builtin_registry());
    ADD_FAILURE() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_CONTAINS(e.problems().front(), "nll.toml:");
    EXPECT_CONTAINS(e.problems().front(), "[metric] (type 'nll'): nll needs the density of the [source]");
  }
  // The default gaussian source has one.
  EXPECT_NO_THROW(check_pipeline(
      parse_config("[dataset]\ntype = \"toy2d\"\n[model]\ntype = \"mlp\"\n[[metric]]\ntype = \"nll\"\n",
                   "nll.toml", testing::builtin_registry()),
      testing::builtin_registry()));
}

TEST(BuildContext, TheFlowsSpaceIsTheDatasUntilSomethingMapsIt) {
  PipelineConfig config = toy("", {"train.steps=0"});
  Components c = build_components(config, testing::builtin_registry());
  EXPECT_EQ(c.context.flow.shape, c.context.data.shape);
  EXPECT_EQ(c.context.source, c.source);
}

}  // namespace
}  // namespace pathline
