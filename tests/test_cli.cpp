// The `pathline` command line: exit codes (0 ok, 2 usage or invalid config, 1 failure while
// running), messages on stderr, results on stdout, and nothing written by a failed validation.
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "pathline/engine/build.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/plot/plot.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

using testing::lines_of;
using testing::run_cli;
using testing::TempDir;
using testing::write_text;

const std::string kGood =
    "[dataset]\ntype = \"toy2d\"\nshape = \"moons\"\n[model]\ntype = \"mlp\"\nwidth = 16\ndepth = 1\n"
    "[train]\nsteps = 5\nbatch_size = 32\n[sample]\nn = 64\ntrajectories = 4\n[solver]\ntype = "
    "\"euler\"\nsteps = 4\n";

TEST(Cli, VersionAndHelp) {
  auto v = run_cli("--version");
  EXPECT_EQ(v.code, 0);
  EXPECT_EQ(v.out, std::string("pathline 0.1.0 (SDK ABI 8, LibTorch ") + TORCH_VERSION + ")\n");
  EXPECT_EQ(run_cli("--help").code, 0);
  EXPECT_EQ(run_cli("").code, 2);
  for (std::string cmd : {"plugins", "inspect", "validate", "run", "train", "resume", "sample", "eval"}) {
    auto h = run_cli(cmd + " --help");
    EXPECT_EQ(h.code, 0) << cmd;
    EXPECT_EQ(h.out.rfind("Usage: pathline " + cmd, 0), 0u) << h.out;
    EXPECT_NE(h.out.find("--plugin-dir"), std::string::npos) << cmd;
  }
}

TEST(Cli, UnknownCommandAndOptionAreUsageErrors) {
  auto r = run_cli("trian x.toml");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(lines_of(r.err)[0], "pathline: unknown command 'trian'; did you mean 'train'?");
  auto o = run_cli("validate --bogus");
  EXPECT_EQ(o.code, 2);
  EXPECT_EQ(o.err, "pathline validate: unrecognised option '--bogus' (see 'pathline validate --help')\n");
  auto m = run_cli("validate");
  EXPECT_EQ(m.code, 2);
  EXPECT_EQ(m.err,
            "pathline validate: missing CONFIG (a pipeline TOML file) (see 'pathline validate --help')\n");
}

// The line of `pathline plugins` that lists plugin `name`, or "" if there is none.
std::string plugin_line(const std::string& out, const std::string& name) {
  for (const auto& line : lines_of(out))
    if (line.rfind("  " + name + " ", 0) == 0) return line;
  return "";
}

TEST(Cli, PluginsListsEveryKindWithItsFile) {
  auto r = run_cli("plugins");
  EXPECT_EQ(r.code, 0) << r.err;
  for (Kind k : kAllKinds)
    EXPECT_NE(r.out.find(std::string("\n") + to_string(k) + ":\n"), std::string::npos) << to_string(k);
  // Name, version, where it was found, file.
  auto solvers = std::filesystem::canonical(testing::builtin_plugins() / "libpathline_solvers.so");
  EXPECT_EQ(plugin_line(r.out, "solvers"),
            "  solvers              0.1.0    built-in             " + solvers.string());
  EXPECT_NE(r.out.find("  rk4 "), std::string::npos);
  EXPECT_EQ(r.out.find("Failed to load"), std::string::npos);
}

TEST(Cli, PluginDirAndEnvironmentAddPluginsAndReportBrokenOnes) {
  auto r = run_cli("plugins --plugin-dir '" + std::string(PATHLINE_FIXTURE_DIR) + "'");
  EXPECT_EQ(r.code, 0);
  auto good = std::filesystem::canonical(testing::fixture("fixture_good"));
  EXPECT_EQ(plugin_line(r.out, "fixture-good"),
            "  fixture-good         1.2.3    --plugin-dir         " + good.string());
  EXPECT_NE(plugin_line(r.out, "solvers").find(" built-in "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("fixture_path"), std::string::npos);
  EXPECT_NE(r.out.find("Failed to load:"), std::string::npos);
  EXPECT_NE(r.out.find("stage 'abi-version': expected SDK ABI version"), std::string::npos);
  auto e = run_cli("inspect path fixture_path", {},
                   "PATHLINE_PLUGIN_PATH='" + std::string(PATHLINE_FIXTURE_DIR) + "'");
  EXPECT_EQ(e.code, 0) << e.err;
  EXPECT_NE(
      e.out.find("\n  from plugin 'fixture-good' 1.2.3 (PATHLINE_PLUGIN_PATH: " + good.string() + ")\n"),
      std::string::npos)
      << e.out;
  // Broken plugins are warnings, one line each, on stderr.
  for (const auto& line : lines_of(e.err)) EXPECT_EQ(line.rfind("pathline: warning: plugin ", 0), 0u) << line;
  EXPECT_EQ(lines_of(e.err).size(), 11u);
}

TEST(Cli, InspectShowsEveryParameter) {
  auto r = run_cli("inspect model mlp");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("model 'mlp'\n", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("from plugin 'models-mlp'"), std::string::npos);
  for (std::string key : {"width", "depth", "activation", "time_embedding"})
    EXPECT_NE(r.out.find("  " + key + " "), std::string::npos) << key;
  EXPECT_NE(r.out.find("default 256, range [1, inf)"), std::string::npos) << r.out;
  EXPECT_EQ(run_cli("inspect model.mlp").out, r.out);
  auto t = run_cli("inspect train");
  EXPECT_EQ(t.code, 0);
  EXPECT_NE(t.out.find("betas"), std::string::npos);
  auto k = run_cli("inspect modle mlp");
  EXPECT_EQ(k.code, 2);
  EXPECT_EQ(
      k.err.rfind("pathline inspect: unknown kind 'modle'; did you mean 'model'? kinds: dataset, path, ", 0),
      0u)
      << k.err;
  auto n = run_cli("inspect solver rk5");
  EXPECT_EQ(n.code, 2);
  EXPECT_EQ(n.err.rfind("pathline inspect: unknown solver 'rk5'; did you mean 'rk4'? registered: ", 0), 0u)
      << n.err;
}

TEST(Cli, ValidateReportsAllProblemsWritesNothingAndExits2) {
  TempDir dir;
  write_text(dir / "bad.toml",
             "[dataset]\ntype = \"toy2d\"\nshape = \"moonz\"\n[model]\ntype = \"mlp\"\nwidth = "
             "-1\n[train]\nsteps = \"x\"\n");
  for (std::string cmd : {"validate", "run", "train"}) {
    auto r = run_cli(cmd + " bad.toml", dir.path());
    EXPECT_EQ(r.code, 2) << cmd;
    EXPECT_EQ(r.out, "") << cmd;
    auto lines = lines_of(r.err);
    ASSERT_EQ(lines.size(), 3u) << r.err;
    EXPECT_EQ(lines[0].rfind("bad.toml:3:9: dataset.shape: expected one of", 0), 0u) << lines[0];
    EXPECT_EQ(lines[1], "bad.toml:6:9: model.width = -1 is out of range: must be >= 1");
    EXPECT_EQ(lines[2], "bad.toml:8:9: train.steps: expected an integer, found a string (\"x\")");
    // Nothing was written anywhere.
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1) << cmd;
  }
}

TEST(Cli, ValidateAcceptsGoodConfigAndOverrides) {
  TempDir dir;
  write_text(dir / "good.toml", kGood);
  auto r = run_cli("validate good.toml --print --set solver.type=rk4", dir.path());
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "good.toml: valid\n");
  EXPECT_NE(r.out.find("[solver]\ntype = \"rk4\"\nsteps = 4\n"), std::string::npos) << r.out;
  auto bad = run_cli("validate good.toml --set solver.steps=0", dir.path());
  EXPECT_EQ(bad.code, 2);
  EXPECT_EQ(bad.err, "--set solver.steps=0: solver.steps = 0 is out of range: must be >= 1\n");
}

// validate builds every component (no training), so what `run` would refuse at once it refuses too:
// a check across two keys in a component's constructor, and labels the data set does not have.
TEST(Cli, ValidateBuildsEveryComponentAndChecksTheLabels) {
  TempDir dir;
  write_text(dir / "grid.toml", kGood + "[time_grid]\ntype = \"edm\"\nratio_min = 2.0\nratio_max = 1.0\n");
  write_text(dir / "labels.toml",
             "[dataset]\ntype = \"toy2d\"\nshape = \"moons\"\nlabelled = true\n[model]\ntype = \"mlp\"\n"
             "width = 16\ndepth = 1\n[sample]\nlabels = [0, 5]\n");
  for (std::string cmd : {"validate", "run"}) {
    auto grid = run_cli(cmd + " grid.toml", dir.path());
    EXPECT_EQ(grid.code, 2) << cmd << ": " << grid.err;
    ASSERT_EQ(lines_of(grid.err).size(), 1u) << grid.err;
    EXPECT_CONTAINS(grid.err, "grid.toml:18:8: [time_grid] (type 'edm'): time grid 'edm': ratio_min (2)");
    EXPECT_CONTAINS(grid.err, "must be below ratio_max (1)");
    auto labels = run_cli(cmd + " labels.toml", dir.path());
    EXPECT_EQ(labels.code, 2) << cmd << ": " << labels.err;
    EXPECT_EQ(labels.err,
              "labels.toml:10:10: sample.labels: 5 is not a class of dataset 'toy2d' (classes 0 to 1, or -1 "
              "for unconditional samples)\n");
    EXPECT_FALSE(std::filesystem::exists(dir / "runs")) << cmd;
  }
  auto fine = run_cli("validate labels.toml --set sample.labels=[1]", dir.path());
  EXPECT_EQ(fine.code, 0) << fine.err;
}

TEST(Cli, CudaRequestedWithoutCudaIsAConfigError) {
  if (cuda_visible()) GTEST_SKIP() << "a CUDA GPU is visible (Cuda.CudaWithoutAGpuIsRefused... hides it)";
  TempDir dir;
  write_text(dir / "good.toml", kGood);
  auto r = run_cli("run good.toml --set run.device=cuda", dir.path());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "--set run.device=cuda: run.device = \"cuda\", but " + cuda_absence() +
                       "; use \"auto\" or \"cpu\"\n");
  EXPECT_FALSE(std::filesystem::exists(dir / "runs"));
}

TEST(Cli, MissingConfigFileIsOneLine) {
  auto r = run_cli("validate /nonexistent/x.toml");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "/nonexistent/x.toml: cannot read the config file: no such file\n");
}

TEST(Cli, RunTrainAndSampleEndToEnd) {
  TempDir dir;
  write_text(dir / "good.toml", kGood);
  auto r = run_cli("run good.toml", dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "runs/good\n");
  for (std::string f : {"config.toml", "metrics.csv", "model.safetensors", "samples.npy", "summary.json"})
    EXPECT_TRUE(std::filesystem::exists(dir / ("runs/good/" + f))) << f;
  // The charts of 2D samples, in a build that draws charts (PATHLINE_CHARTS).
  for (std::string f : {"samples.png", "trajectories.png"})
    EXPECT_EQ(std::filesystem::exists(dir / ("runs/good/" + f)), plot::available()) << f;
  // A second run never overwrites the first.
  auto again = run_cli("run good.toml", dir.path());
  EXPECT_EQ(again.code, 0);
  EXPECT_EQ(again.out, "runs/good-2\n");
  // Sampling a trained run with another solver, without retraining.
  auto s = run_cli("sample runs/good --set solver.type=heun --set solver.steps=3", dir.path());
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_EQ(s.out, "runs/good/sample-heun\n");
  auto summary = nlohmann::json::parse(testing::read_text(dir / "runs/good/sample-heun/summary.json"));
  EXPECT_EQ(summary["sampling"]["solver"], "heun");
  EXPECT_EQ(summary["sampling"]["time_grid"], "uniform");
  EXPECT_EQ(summary["sampling"]["n"], 64);
  EXPECT_EQ(summary["sampling"]["nfe"], 6);
  // The replayed config is the run's own file.
  auto replay = run_cli("validate runs/good/config.toml", dir.path());
  EXPECT_EQ(replay.code, 0) << replay.err;
}

TEST(Cli, SampleOutWritesWhereAskedAndRefusesAFullFolder) {
  TempDir dir;
  write_text(dir / "good.toml", kGood);
  ASSERT_EQ(run_cli("train good.toml", dir.path()).code, 0);
  EXPECT_FALSE(std::filesystem::exists(dir / "runs/good/samples.npy"));  // train only trains
  auto s = run_cli("sample runs/good --out elsewhere --set sample.n=10", dir.path());
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_EQ(s.out, "elsewhere\n");
  EXPECT_EQ(read_npy(dir / "elsewhere/samples.npy").size(0), 10);
  EXPECT_TRUE(std::filesystem::exists(dir / "elsewhere/config.toml"));
  EXPECT_FALSE(std::filesystem::exists(dir / "runs/good/sample-euler"));
  auto full = run_cli("sample runs/good --out elsewhere", dir.path());
  EXPECT_EQ(full.code, 1);
  EXPECT_EQ(full.err, "pathline sample: error: elsewhere: the output directory exists and is not empty\n");
}

TEST(Cli, TypeOverrideDropsTheOldTypesKeysWithANote) {
  TempDir dir;
  write_text(dir / "p.toml", kGood + "[path]\ntype = \"linear\"\nsigma_min = 0.01\n");
  auto r = run_cli("validate p.toml --print --set path.type=cosine", dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  auto lines = lines_of(r.err);
  // kGood's euler with 4 steps on the cosine path is 18% off its flow: steps the user chose, a note.
  ASSERT_EQ(lines.size(), 3u) << r.err;
  EXPECT_EQ(lines[0].rfind("note: --set path.type=cosine: dropped path.sigma_min", 0), 0u) << lines[0];
  EXPECT_EQ(lines[1].rfind("note: solver 'euler' with 4 steps on path 'cosine'", 0), 0u) << lines[1];
  EXPECT_EQ(lines[2], "p.toml: valid");
  EXPECT_NE(r.out.find("[path]\ntype = \"cosine\"\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("sigma_min"), std::string::npos) << r.out;
}

TEST(Cli, GuidanceOnUnlabelledDataIsRefusedBeforeAnythingIsWritten) {
  TempDir dir;
  write_text(dir / "good.toml", kGood);
  auto r = run_cli("run good.toml --set sample.guidance_scale=2", dir.path());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(
      r.err,
      "--set sample.guidance_scale=2: sample.guidance_scale = 2 needs labelled data, but dataset 'toy2d' "
      "has no labels; set guidance_scale = 1 or use a labelled data set\n");
  EXPECT_FALSE(std::filesystem::exists(dir / "runs"));
}

TEST(Cli, SampleErrors) {
  TempDir dir;
  auto missing = run_cli("sample nowhere", dir.path());
  EXPECT_EQ(missing.code, 2);
  EXPECT_EQ(missing.err, "pathline sample: nowhere: no such run directory (see 'pathline sample --help')\n");
  write_text(dir / "good.toml", kGood);
  ASSERT_EQ(run_cli("train good.toml", dir.path()).code, 0);
  // Sampling uses the EMA weights by default, the raw ones with use_ema = false: each is checked.
  for (std::string file : {"model.safetensors", "model-raw.safetensors"}) {
    write_text(dir / ("runs/good/" + file), "not a checkpoint");
    auto corrupt =
        run_cli("sample runs/good" +
                    std::string(file == "model-raw.safetensors" ? " --set sample.use_ema=false" : ""),
                dir.path());
    EXPECT_EQ(corrupt.code, 1);
    EXPECT_EQ(corrupt.err.rfind("pathline sample: error: runs/good/" + file + ": header length ", 0), 0u)
        << corrupt.err;
    EXPECT_EQ(lines_of(corrupt.err).size(), 1u) << corrupt.err;
    EXPECT_FALSE(std::filesystem::exists(dir / "runs/good/sample-euler"));  // nothing half-made
    EXPECT_EQ(testing::read_text(dir / ("runs/good/" + file)), "not a checkpoint");
  }
}

TEST(Cli, EvalScoresTheRunsSamplesOrFreshOnes) {
  TempDir dir;
  write_text(dir / "good.toml", kGood + "[[metric]]\ntype = \"energy_distance\"\n");
  ASSERT_EQ(run_cli("run good.toml", dir.path()).code, 0);
  const auto run_summary = nlohmann::json::parse(testing::read_text(dir / "runs/good/summary.json"));

  // On the run's own samples: the same value as the run reported, nothing resampled.
  auto r = run_cli("eval runs/good", dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "runs/good/eval.json\n");
  auto eval = nlohmann::json::parse(testing::read_text(dir / "runs/good/eval.json"));
  EXPECT_EQ(eval["samples"], "samples.npy");
  EXPECT_DOUBLE_EQ(eval["metrics"]["energy_distance"].get<double>(),
                   run_summary["metrics"]["energy_distance"].get<double>());
  EXPECT_EQ(eval["metric_details"]["energy_distance"]["generated_samples"], 64);
  EXPECT_NE(r.err.find("eval: the run's 64 samples (samples.npy)"), std::string::npos) << r.err;

  // Another solver means fresh samples; --out writes elsewhere and leaves eval.json alone.
  const std::string before = testing::read_text(dir / "runs/good/eval.json");
  auto fresh =
      run_cli("eval runs/good --set solver.type=heun --set sample.n=32 --out other.json", dir.path());
  ASSERT_EQ(fresh.code, 0) << fresh.err;
  auto other = nlohmann::json::parse(testing::read_text(dir / "other.json"));
  EXPECT_EQ(other["samples"], "fresh");
  EXPECT_EQ(other["sampling"]["solver"], "heun");
  EXPECT_EQ(other["metric_details"]["energy_distance"]["generated_samples"], 32);
  EXPECT_EQ(testing::read_text(dir / "runs/good/eval.json"), before);

  // A train-only run has no samples: eval draws them.
  ASSERT_EQ(run_cli("train good.toml", dir.path()).code, 0);
  auto trained = run_cli("eval runs/good-2", dir.path());
  ASSERT_EQ(trained.code, 0) << trained.err;
  EXPECT_EQ(nlohmann::json::parse(testing::read_text(dir / "runs/good-2/eval.json"))["samples"], "fresh");
}

TEST(Cli, EvalErrorsKeepTheEarlierResults) {
  TempDir dir;
  auto missing = run_cli("eval nowhere", dir.path());
  EXPECT_EQ(missing.code, 2);
  EXPECT_EQ(missing.err, "pathline eval: nowhere: no such run directory (see 'pathline eval --help')\n");
  write_text(dir / "good.toml", kGood);
  ASSERT_EQ(run_cli("run good.toml", dir.path()).code, 0);
  // No metric configured: say how to ask for one.
  auto none = run_cli("eval runs/good", dir.path());
  EXPECT_EQ(none.code, 1);
  EXPECT_NE(none.err.find("has no [[metric]] to compute"), std::string::npos) << none.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "runs/good/eval.json"));
  // A good eval, then a corrupt samples.npy: one line naming the file, eval.json as it was.
  ASSERT_EQ(run_cli("eval runs/good --set metric[0].type=energy_distance", dir.path()).code, 0);
  const std::string before = testing::read_text(dir / "runs/good/eval.json");
  write_text(dir / "runs/good/samples.npy", "garbage");
  auto corrupt = run_cli("eval runs/good --set metric[0].type=energy_distance", dir.path());
  EXPECT_EQ(corrupt.code, 1);
  EXPECT_EQ(corrupt.err.rfind("pathline eval: error: runs/good/samples.npy", 0), 0u) << corrupt.err;
  EXPECT_EQ(lines_of(corrupt.err).size(), 1u) << corrupt.err;
  EXPECT_EQ(testing::read_text(dir / "runs/good/eval.json"), before);
}

TEST(Cli, BenchMeasuresTrainingSamplingAndMatrixProducts) {
  const std::string quickstart = std::string(PATHLINE_SOURCE_DIR) + "/configs/quickstart.toml";
  auto train = run_cli("bench train '" + quickstart + "' --steps 3 --warmup 1 --set train.batch_size=32");
  ASSERT_EQ(train.code, 0) << train.err;
  auto t = nlohmann::json::parse(train.out);
  EXPECT_EQ(t["job"], "train");
  EXPECT_EQ(t["steps"], 3);
  EXPECT_EQ(t["batch_size"], 32);
  EXPECT_GT(t["steps_per_s"].get<double>(), 0.0);
  EXPECT_NEAR(t["samples_per_s"].get<double>(), 32 * t["steps_per_s"].get<double>(), 1e-6);
  // The quickstart MLP: 4 layers of 256 on [x, 32 time features]: (34 + 3 x 256) x 256 + 256 x 2.
  EXPECT_EQ(t["macs_per_sample"].get<double>(), (34.0 + 3 * 256) * 256 + 256 * 2);
  // device = "auto": the GPU where one is visible, and there LibTorch's optimizer (the fused one
  // updates float32 CPU weights).
  EXPECT_EQ(t["device"], cuda_visible() ? "cuda:0" : "cpu");
  EXPECT_EQ(t["fused_optimizer"].get<bool>(), !cuda_visible());
  EXPECT_GT(t["peak_mb"].get<double>(), 10.0);
  EXPECT_TRUE(std::isfinite(t["last_loss"].get<double>()));

  auto sample =
      run_cli("bench sample '" + quickstart +
              "' --repeats 1 --warmup 0 --set sample.n=50 --set solver.steps=3 --set sample.trajectories=0");
  ASSERT_EQ(sample.code, 0) << sample.err;
  auto s = nlohmann::json::parse(sample.out);
  EXPECT_EQ(s["nfe"], 6);  // midpoint: two evaluations a step
  EXPECT_EQ(s["n"], 50);
  EXPECT_EQ(s["device"], cuda_visible() ? "cuda:0" : "cpu");
  EXPECT_GT(s["samples_per_s"].get<double>(), 0.0);
  // Forward passes only: 2 x MACs per evaluation, NFE evaluations per sample.
  EXPECT_NEAR(s["gflops"].get<double>(),
              2.0 * s["macs_per_sample"].get<double>() * 6 * s["samples_per_s"].get<double>() / 1e9, 1e-9);

  auto peak = run_cli("bench peak --size 64 --repeats 2 --threads 1");
  ASSERT_EQ(peak.code, 0) << peak.err;
  auto p = nlohmann::json::parse(peak.out);
  EXPECT_EQ(p["size"], 64);
  EXPECT_EQ(p["threads"], 1);
  EXPECT_EQ(p["dtype"], "float32");
  EXPECT_GT(p["gflops"].get<double>(), 0.0);
  // The build summary the benchmarks compare with torch.__config__.show().
  EXPECT_NE(p["torch_config"].get<std::string>().find("PyTorch built with"), std::string::npos);
  auto bf16 = run_cli("bench peak --size 64 --repeats 1 --threads 1 --dtype bfloat16");
  ASSERT_EQ(bf16.code, 0) << bf16.err;
  EXPECT_EQ(nlohmann::json::parse(bf16.out)["dtype"], "bfloat16");
  EXPECT_GT(nlohmann::json::parse(bf16.out)["gflops"].get<double>(), 0.0);
  auto half = run_cli("bench peak --size 64 --dtype float16");
  EXPECT_EQ(half.code, 2);
  EXPECT_NE(half.err.find("--dtype must be float32 or bfloat16, got 'float16'"), std::string::npos)
      << half.err;

  auto bad = run_cli("bench walk");
  EXPECT_EQ(bad.code, 2);
  EXPECT_EQ(bad.err,
            "pathline bench: unknown job 'walk'; use train, sample or peak (see 'pathline bench --help')\n");
  auto zero = run_cli("bench train '" + quickstart + "' --steps 0");
  EXPECT_EQ(zero.code, 2);
  EXPECT_NE(zero.err.find("--steps and --repeats must be at least 1"), std::string::npos) << zero.err;
  auto broken = run_cli("bench train '" + quickstart + "' --set model.width=0");
  EXPECT_EQ(broken.code, 2);
  EXPECT_NE(broken.err.find("model.width"), std::string::npos) << broken.err;
}

TEST(Cli, BlasKernelsAreLeftAloneWhenTheUserChoseThem) {
  // OPENBLAS_CORETYPE set by the user: Pathline does not second-guess it.
  ::setenv("OPENBLAS_CORETYPE", "HASWELL", 1);
  EXPECT_FALSE(blas_kernel_override().has_value());
  ::unsetenv("OPENBLAS_CORETYPE");
  // The `pathline` command runs on kernels for what the processor supports: never the generic ones
  // on a processor with AVX2.
  auto peak = run_cli("bench peak --size 64 --repeats 1");
  ASSERT_EQ(peak.code, 0) << peak.err;
  const std::string kernels = nlohmann::json::parse(peak.out)["blas"];
  __builtin_cpu_init();
  if (!kernels.empty() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_NE(kernels, "Prescott");
    EXPECT_NE(kernels, "Core2");
    EXPECT_NE(kernels, "Nehalem");
  }
}

}  // namespace
}  // namespace pathline
