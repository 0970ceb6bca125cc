// Every registered path x parameterization pair, swapped in with one TOML line each and every other
// key at its default, trains and samples to a quality close to velocity prediction on the same path:
// the engine's default sampling interval ([sample] t_start / t_end = "auto", a final denoising step)
// and loss weighting ([train] loss_weighting = "auto") keep noise, data and score prediction away from
// the ends of [0, 1] where their conversion to velocity is singular.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "pathline/engine/io.hpp"
#include "pathline/engine/pipeline.hpp"
#include "pathline/plot/plot.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

using testing::TempDir;

// A small version of the quickstart (checkerboard, MLP, midpoint): only [path] and
// [parameterization] differ between pairs. Measured (2 threads): velocity 0.014-0.023 on the five
// paths, every other pair within 0.017 of its path's velocity; before the "auto" interval and
// weighting, linear x score scored in the thousands and cosine x noise 0.7 (on the full quickstart).
double energy_for(const std::string& path, const std::string& parameterization,
                  const std::filesystem::path& dir) {
  const std::string text = fmt::format(
      "[run]\nthreads = 2\n"
      "[dataset]\ntype = \"toy2d\"\nshape = \"checkerboard\"\n"
      "[path]\ntype = \"{}\"\n"
      "[parameterization]\ntype = \"{}\"\n"
      "[model]\ntype = \"mlp\"\nwidth = 128\ndepth = 3\n"
      "[train]\nsteps = 500\nbatch_size = 512\nlr = 3e-3\nlr_schedule = \"cosine\"\n"
      "[solver]\ntype = \"midpoint\"\nsteps = 20\n"
      "[sample]\nn = 2000\ntrajectories = 0\n"
      "[[metric]]\ntype = \"energy_distance\"\n",
      path, parameterization);
  const PipelineConfig config = parse_config(text, "swap.toml", testing::builtin_registry());
  run_job(config, testing::builtin_registry(), JobOptions{dir, true, true}, nullptr);
  auto summary = nlohmann::json::parse(testing::read_text(dir / "summary.json"));
  return summary["metrics"]["energy_distance"].get<double>();
}

PipelineConfig pair_config(const std::string& path, const std::string& parameterization,
                           const std::vector<std::string>& overrides = {}) {
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(
      fmt::format("[dataset]\ntype = \"toy2d\"\n[model]\ntype = \"mlp\"\nwidth = 32\ndepth = 2\n"
                  "[path]\ntype = \"{}\"\n[parameterization]\ntype = \"{}\"\n",
                  path, parameterization),
      "pair.toml", testing::builtin_registry(), options);
}

SamplingInterval interval_of(const std::string& path, const std::string& parameterization,
                             const std::vector<std::string>& overrides = {}) {
  const PipelineConfig config = pair_config(path, parameterization, overrides);
  Components c = build_components(config, testing::builtin_registry());
  return sampling_interval(config, c);
}

TEST(SamplingInterval, AutoEndsAvoidWhereTheParameterizationIsSingular) {
  // velocity: all of [0, 1], nothing after the solver.
  auto v = interval_of("linear", "velocity");
  EXPECT_EQ(v.t_start, 0.0);
  EXPECT_EQ(v.t_end, 1.0);
  EXPECT_FALSE(v.denoise);
  // noise and score divide by alpha_t: start where alpha_t = 0.02 (t on linear; asin on cosine).
  for (const char* p : {"noise", "score"}) {
    auto linear = interval_of("linear", p);
    EXPECT_NEAR(linear.t_start, 0.02, 1e-8) << p;
    EXPECT_EQ(linear.t_end, 1.0) << p;
    EXPECT_FALSE(linear.denoise) << p;
    EXPECT_NEAR(interval_of("cosine", p).t_start, 2.0 / M_PI * std::asin(0.02), 1e-8) << p;
    EXPECT_EQ(interval_of("ve", p).t_start, 0.0) << p;  // alpha = 1 throughout
  }
  // data divides by sigma_t: stop where sigma_t = 0.02, then jump to the predicted data.
  auto data = interval_of("linear", "data");
  EXPECT_EQ(data.t_start, 0.0);
  EXPECT_NEAR(data.t_end, 0.98, 1e-8);
  EXPECT_TRUE(data.denoise);
}

TEST(SamplingInterval, ExplicitEndsAreKeptAndFinalStepObeys) {
  auto noise = interval_of("linear", "noise", {"sample.t_start=0"});
  EXPECT_EQ(noise.t_start, 0.0);
  auto data = interval_of("linear", "data", {"sample.t_end=0.9", "sample.final_step=none"});
  EXPECT_EQ(data.t_end, 0.9);
  EXPECT_FALSE(data.denoise);
  EXPECT_TRUE(interval_of("linear", "velocity", {"sample.final_step=denoise"}).denoise);
  EXPECT_TRUE(interval_of("linear", "velocity", {"sample.t_end=0.5"}).denoise);  // auto: t_end < 1
  // "auto" back explicitly, as a resolved config writes it.
  EXPECT_NEAR(interval_of("linear", "noise", {"sample.t_start=0.5", "sample.t_start=auto"}).t_start, 0.02,
              1e-8);
}

TEST(SamplingInterval, AutoSurvivesTheResolvedConfig) {
  const PipelineConfig config = pair_config("linear", "noise");
  const std::string resolved = config.to_toml();
  EXPECT_NE(resolved.find("t_start = \"auto\""), std::string::npos) << resolved;
  EXPECT_NE(resolved.find("loss_weighting = \"auto\""), std::string::npos) << resolved;
  const PipelineConfig again = parse_config(resolved, "resolved.toml", testing::builtin_registry());
  EXPECT_TRUE(again.table("sample").is_auto("t_start"));
  EXPECT_TRUE(again.table("sample").is_auto("t_end"));
}

TEST(SamplingInterval, WrongValuesNameTheKey) {
  auto problem = [](const std::string& text) {
    try {
      parse_config(text, "bad.toml", testing::builtin_registry());
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(
      problem("[sample]\nt_start = \"soon\"\n").find("sample.t_start: expected a number or \"auto\", found"),
      std::string::npos)
      << problem("[sample]\nt_start = \"soon\"\n");
  EXPECT_NE(problem("[sample]\nt_end = 1.5\n").find("sample.t_end"), std::string::npos);
  EXPECT_NE(problem("[sample]\nfinal_step = \"jump\"\n").find("sample.final_step"), std::string::npos);
  // A backwards interval cannot sample.
  TempDir dir;
  const PipelineConfig backwards =
      pair_config("linear", "velocity", {"sample.t_start=0.6", "sample.t_end=0.4"});
  Components c = build_components(backwards, testing::builtin_registry());
  try {
    sample(backwards, c);
    ADD_FAILURE() << "sampled backwards";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("sample.t_start = 0.6 must be below sample.t_end = 0.4"),
              std::string::npos)
        << e.what();
  }
}

TEST(SamplingInterval, FinalDenoisingStepCostsOneEvaluationAndLandsOnTheData) {
  TempDir dir;
  const PipelineConfig config = pair_config("linear", "data",
                                            {"train.steps=20", "train.batch_size=64", "solver.type=midpoint",
                                             "solver.steps=5", "sample.n=50", "sample.trajectories=4"});
  Components c = build_components(config, testing::builtin_registry());
  const SampleResult s = sample(config, c);
  EXPECT_EQ(s.nfe, 2 * 5 + 1);
  ASSERT_TRUE(s.trajectories.defined());
  EXPECT_EQ(s.trajectories.size(0), 5 + 2);  // the grid's 6 times and the jump to t = 1
  ASSERT_EQ(s.times.size(), 7u);
  EXPECT_NEAR(s.times[5], 0.98, 1e-8);
  EXPECT_EQ(s.times.back(), 1.0);
  // The samples are the model's data prediction at x(t_end).
  ModelField field(*c.model, *c.path, *c.parameterization, 2);
  c10::InferenceMode inference;
  const torch::Tensor x_end = s.trajectories[5];
  EXPECT_TRUE(torch::allclose(field.data(x_end, s.times[5]), s.samples.narrow(0, 0, 4), 1e-5, 1e-6));
}

TEST(SampleSizes, AnyBatchSizeNAndTrajectoryCountWork) {
  // Batches of 1 with more trajectories asked for than fit in one batch, a last batch smaller than
  // the others, guidance on labelled data: every sample is drawn, the pathlines come from the first
  // batch, and the run writes its outputs.
  for (const auto& [batch, n, trajectories] :
       std::vector<std::tuple<int, int, int>>{{1, 3, 48}, {2, 5, 3}, {4, 3, 0}, {7, 7, 7}}) {
    TempDir dir;
    const PipelineConfig config =
        pair_config("linear", "velocity",
                    {"dataset.labelled=true", "train.steps=2", "train.batch_size=8", "solver.type=euler",
                     "solver.steps=3", fmt::format("sample.batch_size={}", batch),
                     fmt::format("sample.n={}", n), fmt::format("sample.trajectories={}", trajectories),
                     "sample.guidance_scale=2", "metric[0].type=energy_distance"});
    run_job(config, testing::builtin_registry(), JobOptions{dir / "run", false, true}, nullptr);
    const torch::Tensor samples = read_npy(dir / "run" / "samples.npy");
    EXPECT_EQ(samples.sizes(), (std::vector<std::int64_t>{n, 2})) << batch << " " << n << " " << trajectories;
    EXPECT_EQ(read_npy(dir / "run" / "labels.npy").size(0), n);
    // 2D pathlines are a chart: drawn when asked for, in a build with charts (PATHLINE_CHARTS).
    EXPECT_EQ(std::filesystem::exists(dir / "run" / "trajectories.png"),
              trajectories > 0 && plot::available());
  }
}

TEST(Swaps, EveryPathAndParameterizationSamplesAsWellAsVelocity) {
  TempDir dir;
  const Registry& registry = testing::builtin_registry();
  for (const std::string& path : registry.names(Kind::path)) {
    const double velocity = energy_for(path, "velocity", dir / (path + "-velocity"));
    std::cout << "[ swap     ] " << path << " x velocity: " << velocity << "\n";
    for (const std::string& parameterization : registry.names(Kind::parameterization)) {
      if (parameterization == "velocity") continue;
      const double energy = energy_for(path, parameterization, dir / (path + "-" + parameterization));
      std::cout << "[ swap     ] " << path << " x " << parameterization << ": " << energy << "\n";
      EXPECT_LT(energy, velocity + 0.02)
          << path << " x " << parameterization << " (velocity: " << velocity << ")";
    }
  }
}

}  // namespace
}  // namespace pathline
