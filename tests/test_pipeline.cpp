// End to end: training lowers the loss and brings samples near the data, outputs decode, runs are
// deterministic.
#include "pathline/engine/io.hpp"
#include "pathline/engine/pipeline.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

using testing::TempDir;

PipelineConfig config_for(const std::string& extra, const std::vector<std::string>& overrides = {}) {
  std::string text =
      "[dataset]\ntype = \"toy2d\"\nshape = \"8gaussians\"\n"
      "[model]\ntype = \"mlp\"\nwidth = 64\ndepth = 2\n"
      "[solver]\ntype = \"midpoint\"\nsteps = 10\n"
      "[sample]\nn = 1000\ntrajectories = 8\n"
      "[[metric]]\ntype = \"energy_distance\"\n"
      "[run]\nthreads = 1\n" +
      extra;
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(text, "e2e.toml", testing::builtin_registry(), options);
}

double energy(const PipelineConfig& config, const std::filesystem::path& dir) {
  run_job(config, testing::builtin_registry(), JobOptions{dir, true, true}, nullptr);
  std::string summary = testing::read_text(dir / "summary.json");
  auto at = summary.find("\"energy_distance\": ");
  EXPECT_NE(at, std::string::npos) << summary;
  return std::stod(summary.substr(at + 19));
}

TEST(Pipeline, TrainingLowersLossAndSamplesLandNearTheData) {
  TempDir dir;
  PipelineConfig trained = config_for("[train]\nsteps = 600\nbatch_size = 256\nlr = 3e-3\nlog_every = 50\n");
  double ed_trained = energy(trained, dir / "trained");
  PipelineConfig untrained = config_for("[train]\nsteps = 0\n");
  double ed_untrained = energy(untrained, dir / "untrained");
  // The untrained field leaves samples near N(0, I); the trained one reaches the 8 modes.
  EXPECT_GT(ed_untrained, 0.5);
  EXPECT_LT(ed_trained, 0.1);

  // The loss curve falls: the last window is well below the first.
  std::ifstream csv(dir / "trained/metrics.csv");
  std::string header, line;
  std::getline(csv, header);
  EXPECT_EQ(header, "step,loss,lr,elapsed_s");
  std::vector<double> losses;
  while (std::getline(csv, line)) losses.push_back(std::stod(line.substr(line.find(',') + 1)));
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses.back(), 0.8 * losses.front());
}

TEST(Pipeline, OutputsDecodeAndRoundTrip) {
  TempDir dir;
  PipelineConfig config = config_for("[train]\nsteps = 20\nbatch_size = 64\n");
  Components c = build_components(config, testing::builtin_registry());
  train(config, c, {}, nullptr);
  SampleResult s = sample(config, c);
  run_job(config, testing::builtin_registry(), JobOptions{dir / "run", true, true}, nullptr);

  torch::Tensor saved = read_npy(dir / "run/samples.npy");
  EXPECT_EQ(saved.sizes(), (std::vector<std::int64_t>{1000, 2}));
  EXPECT_EQ(saved.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(saved, s.samples));  // same config, same seed, same samples

  for (std::string f : {"samples.png", "trajectories.png"}) {
    Image image = read_png(dir / ("run/" + f));
    EXPECT_EQ(image.width, 800) << f;
    EXPECT_EQ(image.height, 800) << f;
  }
  ASSERT_TRUE(s.trajectories.defined());
  EXPECT_EQ(s.trajectories.sizes(), (std::vector<std::int64_t>{11, 8, 2}));  // 10 steps + the start
  EXPECT_EQ(s.nfe, 20);                                                      // midpoint: 2 per step
}

TEST(Pipeline, Determinism) {
  TempDir dir;
  std::vector<std::string> overrides = {"train.steps=40", "train.batch_size=128", "train.log_every=5", "run.seed=7"};
  PipelineConfig config = config_for("", overrides);
  for (std::string name : {"a", "b"})
    run_job(config, testing::builtin_registry(), JobOptions{dir / name, true, true}, nullptr);
  auto strip_time = [](const std::string& csv) {
    std::string out;
    std::stringstream in(csv);
    std::string line;
    while (std::getline(in, line)) out += line.substr(0, line.rfind(',')) + "\n";
    return out;
  };
  EXPECT_EQ(strip_time(testing::read_text(dir / "a/metrics.csv")), strip_time(testing::read_text(dir / "b/metrics.csv")));
  EXPECT_TRUE(torch::equal(read_npy(dir / "a/samples.npy"), read_npy(dir / "b/samples.npy")));
  // Another seed gives other samples.
  overrides.back() = "run.seed=8";
  run_job(config_for("", overrides), testing::builtin_registry(), JobOptions{dir / "c", true, true}, nullptr);
  EXPECT_FALSE(torch::equal(read_npy(dir / "a/samples.npy"), read_npy(dir / "c/samples.npy")));
}

TEST(Pipeline, RunDirectoriesAreNeverOverwrittenUnlessAsked) {
  TempDir dir;
  PipelineConfig config = config_for("", {"train.steps=0", "run.dir=\"" + (dir / "runs").string() + "\"", "run.name=x"});
  EXPECT_EQ(create_run_dir(config, std::nullopt, false), dir / "runs/x");
  testing::write_text(dir / "runs/x/keep", "1");
  EXPECT_EQ(create_run_dir(config, std::nullopt, false), dir / "runs/x-2");
  EXPECT_TRUE(std::filesystem::exists(dir / "runs/x/keep"));
  EXPECT_THROW(create_run_dir(config, dir / "runs/x", false), InputError);
  EXPECT_EQ(create_run_dir(config, std::nullopt, true), dir / "runs/x");
  EXPECT_FALSE(std::filesystem::exists(dir / "runs/x/keep"));
}

TEST(Pipeline, WeightsRoundTripAndCorruptCheckpointIsAClearError) {
  TempDir dir;
  PipelineConfig config = config_for("", {"train.steps=3", "train.batch_size=16"});
  Components a = build_components(config, testing::builtin_registry());
  train(config, a, {}, nullptr);
  save_weights(*a.model, dir / "w.pt");
  PipelineConfig other_seed = config_for("", {"run.seed=99"});
  Components b = build_components(other_seed, testing::builtin_registry());
  load_weights(*b.model, dir / "w.pt");
  auto pa = a.model->parameters(), pb = b.model->parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i]));

  testing::write_text(dir / "bad.pt", "garbage");
  try {
    load_weights(*b.model, dir / "bad.pt");
    FAIL();
  } catch (const InputError& e) {
    std::string what = e.what();
    EXPECT_EQ(what.rfind((dir / "bad.pt").string() + ": corrupt or incompatible checkpoint: ", 0), 0u) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos);
  }
}

}  // namespace
}  // namespace pathline
