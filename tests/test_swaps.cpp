// Every registered path x parameterization pair, swapped in with one TOML line each and every other
// key at its default, trains and samples to a quality close to velocity prediction on the same path:
// the engine's default sampling interval ([sample] t_start / t_end = "auto", a final denoising step)
// and loss weighting ([train] loss_weighting = "auto") keep noise, data and score prediction away from
// the ends of [0, 1] where their conversion to velocity is singular.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
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

// A registry with the built-in plugins and the third-party paths of tests/fixtures/singular_paths.cpp.
const Registry& registry_with_singular_paths() {
  static Registry* registry = [] {
    auto* r = new Registry();
    PluginHost host(*r);
    host.load_directory(testing::builtin_plugins());
    host.load_directory(std::filesystem::path(PATHLINE_FIXTURE_DIR) / "singular-paths");
    for (const auto& f : host.failures()) ADD_FAILURE() << f.line();
    return r;
  }();
  return *registry;
}

PipelineConfig solver_config(const std::string& path, const std::string& solver,
                             const std::vector<std::string>& overrides = {}) {
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(
      fmt::format("[dataset]\ntype = \"toy2d\"\n[model]\ntype = \"mlp\"\nwidth = 32\ndepth = 2\n"
                  "[path]\ntype = \"{}\"\n[solver]\ntype = \"{}\"\n",
                  path, solver),
      "solver.toml", registry_with_singular_paths(), options);
}

TEST(SamplingInterval, DataSolversStartWhereTheVelocityInformsTheData) {
  // polynomial (exponent 2): the velocity's data prediction gains (1 - t^2) / (2 t), at most 50 from
  // t = sqrt(2501) - 50 = 0.009999. DPM-Solver++ asks for the data prediction: it starts there; the
  // velocity solvers start at 0. A third-party path with the same kind of start (t^3) gets the same
  // treatment without declaring anything: the engine reads it off the coefficients.
  const auto starts_at = [](const std::string& path, const std::string& solver) {
    const PipelineConfig config = solver_config(path, solver);
    Components c = build_components(config, registry_with_singular_paths());
    return sampling_interval(config, c).t_start;
  };
  EXPECT_NEAR(starts_at("polynomial", "dpmpp_2m"), std::sqrt(2501.0) - 50.0, 1e-7);
  for (const char* solver : {"euler", "midpoint", "heun", "rk4", "dopri5", "adams_bashforth"})
    EXPECT_EQ(starts_at("polynomial", solver), 0.0) << solver;
  const double cubic = starts_at("fixture_cubic", "dpmpp_2m");
  EXPECT_NEAR(conversion_gain(*registry_with_singular_paths().create<Path>("fixture_cubic", {}, {}),
                              Quantity::velocity, Quantity::data, cubic),
              kMaxConversionGain, 1e-3);
  EXPECT_GT(cubic, 0.05);                           // (1 - t^3) / (3 t^2) = 50 at t = 0.0816
  EXPECT_EQ(starts_at("linear", "dpmpp_2m"), 0.0);  // (1 - t) / 1: never above 1
}

TEST(SamplingInterval, ASolverWhoseQuantityThePathCannotGiveIsRefusedAtValidation) {
  // fixture_stalling stops moving at t = 1/2: there the velocity says nothing about the data, and
  // no interval from noise to data avoids it. validate (check_pipeline) refuses, naming the solver,
  // the path and where; a velocity solver on the same path is fine.
  const PipelineConfig bad = solver_config("fixture_stalling", "dpmpp_2m");
  try {
    check_pipeline(bad, registry_with_singular_paths());
    ADD_FAILURE() << "dpmpp_2m on fixture_stalling passed validation";
  } catch (const ConfigError& e) {
    ASSERT_EQ(e.problems().size(), 1u);
    const std::string& line = e.problems()[0];
    EXPECT_CONTAINS(line, "solver.toml:10:8: solver 'dpmpp_2m' needs the data");
    EXPECT_CONTAINS(line, "path 'fixture_stalling'");
    EXPECT_CONTAINS(line, "not between t = 0.4");  // a band around t = 1/2
    EXPECT_CONTAINS(line, "and 0.5");
  }
  EXPECT_NO_THROW(
      check_pipeline(solver_config("fixture_stalling", "midpoint"), registry_with_singular_paths()));
}

TEST(SolverOnPath, NoiseScaleErrorIsTheSolversOwnErrorOnAPointMass) {
  // On the ve path (sigma = 0.01 * 1500^(1 - t), alpha = 1) the point mass's flow is dx/dt = -L x,
  // L = log 1500: euler multiplies x by (1 - L h) per step where the flow multiplies it by e^(-L h).
  // The noise dominates (sigma >= 1) up to t = 1 - log 100 / L = 0.370, grid time 37 of 100.
  const Registry& registry = registry_with_singular_paths();
  const PipelineConfig ve = solver_config("ve", "euler", {"solver.steps=100"});
  Components c = build_components(ve, registry);
  const double L = std::log(1500.0);
  const double euler = std::abs(std::pow(1 - L * 0.01, 37) / std::exp(-L * 0.37) - 1);
  EXPECT_NEAR(noise_scale_error(*c.solver, *c.time_grid, *c.path, 0.0, 1.0), euler, 1e-9);
  EXPECT_GT(euler, 0.09);
  // Euler is exact on the linear path (x_t = (1 - t) x0 is linear in t); midpoint on ve is 1% off.
  Components linear = build_components(solver_config("linear", "euler"), registry);
  EXPECT_LT(noise_scale_error(*linear.solver, *linear.time_grid, *linear.path, 0.0, 1.0), 1e-12);
  Components midpoint = build_components(solver_config("ve", "midpoint"), registry);
  EXPECT_NEAR(noise_scale_error(*midpoint.solver, *midpoint.time_grid, *midpoint.path, 0.0, 1.0), 0.0105,
              0.001);
  // An interval that starts where the data dominates has nothing to check.
  EXPECT_EQ(noise_scale_error(*c.solver, *c.time_grid, *c.path, 0.5, 1.0), 0.0);
}

TEST(SolverOnPath, DefaultStepsThatMissAreRefusedChosenStepsNoted) {
  const Registry& registry = registry_with_singular_paths();
  // A third-party path over six orders of magnitude of noise: euler at its default 100 steps is
  // (1 - L/100)^55 / e^(-0.55 L) - 1 = 44% off (L = log 1e6; the noise dominates up to t = 0.55),
  // refused where [solver] type is, with the steps that do (doubling: 200 is 24% off, 400 12.6%).
  try {
    check_pipeline(solver_config("fixture_steep_ve", "euler"), registry);
    ADD_FAILURE() << "euler on fixture_steep_ve passed validation";
  } catch (const ConfigError& e) {
    ASSERT_EQ(e.problems().size(), 1u);
    EXPECT_CONTAINS(e.problems()[0],
                    "solver.toml:10:8: solver 'euler' with 100 steps on path 'fixture_steep_ve'");
    EXPECT_CONTAINS(e.problems()[0], "by 43.9%");
    EXPECT_CONTAINS(e.problems()[0], "solver.steps = 400 (12.6%)");
  }
  // The built-in ve is 9.9% off at euler's defaults: within the bound, it samples well (0.019).
  EXPECT_TRUE(check_pipeline(solver_config("ve", "euler"), registry).empty());
  // Steps chosen by the user: a note, and it builds.
  std::vector<std::string> notes;
  EXPECT_NO_THROW(notes = check_pipeline(solver_config("ve", "euler", {"solver.steps=25"}), registry));
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_CONTAINS(notes[0], "solver 'euler' with 25 steps on path 've'");
  EXPECT_CONTAINS(notes[0], "by 38.2%");
  EXPECT_TRUE(check_pipeline(solver_config("fixture_steep_ve", "heun"), registry).empty());
  // Few steps on a path euler follows exactly are fine at any count.
  EXPECT_TRUE(check_pipeline(solver_config("linear", "euler", {"solver.steps=2"}), registry).empty());
}

TEST(SolverOnPath, APathSuggestsTheSolverForPipelinesThatNameNone) {
  const Registry& registry = testing::builtin_registry();
  const std::string base = "[dataset]\ntype = \"toy2d\"\n[model]\ntype = \"mlp\"\n[path]\ntype = \"ve\"\n";
  EXPECT_EQ(parse_config(base, "ve.toml", registry).component("solver").type, "heun");
  EXPECT_EQ(parse_config(base + "[solver]\ntype = \"rk4\"\n", "ve.toml", registry).component("solver").type,
            "rk4");
  // A --set of a solver key without a [solver] table reaches the suggested solver; other paths keep euler.
  ConfigOptions steps;
  steps.overrides = {"solver.steps=80"};
  const PipelineConfig set = parse_config(base, "ve.toml", registry, steps);
  EXPECT_EQ(set.component("solver").type, "heun");
  EXPECT_EQ(set.component("solver").params.integer("steps"), 80);
  ConfigOptions cosine;
  cosine.overrides = {"path.type=cosine"};
  EXPECT_EQ(parse_config(base, "ve.toml", registry, cosine).component("solver").type, "euler");
  EXPECT_NO_THROW(check_pipeline(parse_config(base, "ve.toml", registry), registry));
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
    const bool affine =
        registry.create<Path>(path, testing::default_params(registry, Kind::path, path), {})->affine();
    for (const std::string& parameterization : registry.names(Kind::parameterization)) {
      if (parameterization == "velocity") continue;
      if (!affine) {
        // A path that draws its own x_t trains velocity predictions only: the others are refused.
        const std::string text = fmt::format(
            "[dataset]\ntype = \"toy2d\"\n[path]\ntype = \"{}\"\n[parameterization]\ntype = \"{}\"\n"
            "[model]\ntype = \"mlp\"\n",
            path, parameterization);
        try {
          check_pipeline(parse_config(text, "swap.toml", registry), registry);
          ADD_FAILURE() << path << " x " << parameterization << " was accepted";
        } catch (const ConfigError& e) {
          EXPECT_CONTAINS(std::string(e.what()), "is not affine");
        }
        continue;
      }
      const double energy = energy_for(path, parameterization, dir / (path + "-" + parameterization));
      std::cout << "[ swap     ] " << path << " x " << parameterization << ": " << energy << "\n";
      EXPECT_LT(energy, velocity + 0.02)
          << path << " x " << parameterization << " (velocity: " << velocity << ")";
    }
  }
}

// Every registered solver, at its defaults, sampling a model trained on every path (velocity
// prediction; a third-party path with a singular end included) lands within 0.02 of the same model
// sampled with the quickstart's midpoint solver; none is refused at validation. Before the engine
// took the solver's quantities into account, dpmpp_2m on the polynomial path scored in the thousands.
TEST(Swaps, EverySolverSamplesEveryPathWithDefaults) {
  TempDir dir;
  int refused = 0;
  const Registry& registry = registry_with_singular_paths();
  std::vector<std::string> paths = registry.names(Kind::path);
  // fixture_stalling refuses data solvers and fixture_steep_ve first-order ones (tests above); the
  // rest must all sample well.
  for (const char* skipped : {"fixture_stalling", "fixture_steep_ve"})
    paths.erase(std::remove(paths.begin(), paths.end(), skipped), paths.end());
  for (const std::string& path : paths) {
    const std::string text = fmt::format(
        "[run]\nthreads = 2\n"
        "[dataset]\ntype = \"toy2d\"\nshape = \"checkerboard\"\n"
        "[path]\ntype = \"{}\"\n"
        "[model]\ntype = \"mlp\"\nwidth = 128\ndepth = 3\n"
        "[train]\nsteps = 1000\nbatch_size = 512\nlr = 3e-3\nlr_schedule = \"cosine\"\n"
        "[sample]\nn = 2000\ntrajectories = 0\n"
        "[[metric]]\ntype = \"energy_distance\"\n",
        path);
    const PipelineConfig config = parse_config(text, "solvers.toml", registry);
    const auto run = dir / path;
    run_job(config, registry, JobOptions{run, true, false, false}, nullptr);
    int samplings = 0;
    auto energy = [&](const std::string& solver, const std::vector<std::string>& extra) {
      std::vector<std::string> overrides = {"solver.type=" + solver};
      overrides.insert(overrides.end(), extra.begin(), extra.end());
      const auto out = sample_job(run, registry, overrides,
                                  run / fmt::format("sample-{}-{}", ++samplings, solver), nullptr);
      auto summary = nlohmann::json::parse(testing::read_text(out / "summary.json"));
      return summary["metrics"]["energy_distance"].get<double>();
    };
    const double reference = energy("midpoint", {"solver.steps=20"});
    std::cout << "[ solvers  ] " << path << " x midpoint 20: " << reference << "\n";
    for (const std::string& solver : registry.names(Kind::solver)) {
      // meanflow steps with the average velocity of a model trained on intervals ([objective]
      // meanflow); on this flow-matching model it is one Euler step by design (test_objectives.cpp).
      if (solver == "meanflow") continue;
      // The pipeline with this solver at its defaults: refused at validation, or it samples well
      // (from the trained run, at the solver's default steps).
      const PipelineConfig fresh =
          parse_config(text + fmt::format("[solver]\ntype = \"{}\"\n", solver), "solvers.toml", registry);
      try {
        check_pipeline(fresh, registry);
      } catch (const ConfigError& e) {
        std::cout << "[ solvers  ] " << path << " x " << solver << ": refused: " << e.what() << "\n";
        // A path that draws its own x_t (not affine) refuses the solvers that ask for more than the
        // velocity; anything else must sample.
        if (std::string(e.what()).find("path '" + path + "' is not one") != std::string::npos) continue;
        EXPECT_CONTAINS(std::string(e.what()), "solver '" + solver + "'");
        ++refused;
        continue;
      }
      std::vector<std::string> extra;
      if (const ParamSpec* steps = registry.find(Kind::solver, solver)->find_param("steps"))
        extra.push_back(fmt::format("solver.steps={}", std::get<std::int64_t>(*steps->default_value)));
      const double value = energy(solver, extra);
      std::cout << "[ solvers  ] " << path << " x " << solver << ": " << value << "\n";
      EXPECT_LT(value, reference + 0.02) << path << " x " << solver << " (midpoint 20: " << reference << ")";
    }
  }
  EXPECT_EQ(refused, 0);
}

}  // namespace
}  // namespace pathline
