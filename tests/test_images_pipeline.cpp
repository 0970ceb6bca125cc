// Images end to end, at tiny sizes: Fashion-MNIST through a U-Net and a DiT, the run's image outputs
// (samples.npy [N, C, H, W], labels.npy, the class-per-row grid, trajectories), raw and EMA weights
// side by side, bfloat16 autocast, and guidance on an image model.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "pathline/engine/io.hpp"
#include "pathline/engine/pipeline.hpp"
#include "pathline/plot/plot.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

using testing::TempDir;

// 64 training images, a two-level U-Net with 8 channels, 4 steps, 20 samples (2 per class).
const char* kTinyUnet = R"([run]
threads = 2
[dataset]
type = "fashion_mnist"
limit = 64
[model]
type = "unet"
channels = 8
channel_mult = [1, 2]
attention_resolutions = [14]
heads = 2
[train]
steps = 4
batch_size = 8
log_every = 2
[solver]
type = "midpoint"
steps = 2
[sample]
n = 20
batch_size = 20
guidance_scale = 2.0
trajectories = 3
)";

PipelineConfig tiny(const std::string& text, const std::vector<std::string>& overrides = {}) {
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(text, "tiny.toml", testing::builtin_registry(), options);
}

nlohmann::json summary_of(const std::filesystem::path& dir) {
  return nlohmann::json::parse(testing::read_text(dir / "summary.json"));
}

// Whether `picture` (grey) holds `grid` (grey) scaled up `scale` times by repetition, anywhere.
bool contains_scaled(const Image& picture, const Image& grid, int scale) {
  const int w = grid.width * scale, h = grid.height * scale;
  auto at = [](const Image& im, int x, int y) {
    return im.pixels[static_cast<std::size_t>(y) * im.width + x];
  };
  for (int y0 = 0; y0 + h <= picture.height; ++y0)
    for (int x0 = 0; x0 + w <= picture.width; ++x0) {
      bool same = true;
      for (int y = 0; y < grid.height && same; ++y)
        for (int x = 0; x < grid.width && same; ++x)
          for (int dy = 0; dy < scale && same; dy += scale - 1 > 0 ? scale - 1 : 1)
            same = at(picture, x0 + x * scale, y0 + y * scale + dy) == at(grid, x, y);
      if (same) return true;
    }
  return false;
}

// Dark pixels (text) in the columns left of `right`.
int dark_pixels_left_of(const Image& picture, int right) {
  int n = 0;
  for (int y = 0; y < picture.height; ++y)
    for (int x = 0; x < right && x < picture.width; ++x)
      n += picture.pixels[static_cast<std::size_t>(y) * picture.width + x] < 100 ? 1 : 0;
  return n;
}

TEST(ImagesPipeline, UnetRunWritesImageOutputs) {
  TempDir dir;
  run_job(tiny(kTinyUnet), testing::builtin_registry(), JobOptions{dir / "run", false, true}, nullptr);
  const auto run = dir / "run";

  torch::Tensor samples = read_npy(run / "samples.npy");
  EXPECT_EQ(samples.sizes(), (std::vector<std::int64_t>{20, 1, 28, 28}));
  EXPECT_TRUE(torch::isfinite(samples).all().item<bool>());
  torch::Tensor labels = read_npy(run / "labels.npy");
  ASSERT_EQ(labels.scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(labels, torch::arange(20, torch::kInt64) % 10));  // every class in turn

  // samples.png: one row per class asked for, that class's samples in order, blanks after them.
  std::vector<torch::Tensor> rows;
  for (std::int64_t k = 0; k < 10; ++k) {
    torch::Tensor mine = samples.index_select(0, torch::nonzero(labels == k).flatten());
    rows.push_back(torch::cat({mine, torch::full({10 - mine.size(0), 1, 28, 28}, -1.0)}));
  }
  Image expected = image_grid(torch::cat(rows), 10, -1.0, 1.0);
  Image written = read_image(run / "samples.png", 1);
  // Drawn large, every pixel a square of whole screen pixels (nearest neighbour), beside the class
  // names: the grid appears in the picture exactly, scaled up.
  EXPECT_GE(written.width, 800);
  const int scale = (800 + expected.width - 1) / expected.width;
  EXPECT_TRUE(contains_scaled(written, expected, scale))
      << "samples.png does not hold the sample grid x" << scale;
  // Left of the grid, the ten class names: Fashion-MNIST's, in dark text on white (a build without
  // charts, PATHLINE_CHARTS=OFF, draws the grid alone).
  if (plot::available()) {
    EXPECT_GT(dark_pixels_left_of(written, written.width - expected.width * scale), 200);
  }

  // trajectories.png: 3 samples (rows) at the 3 times of a 2-step grid (columns), drawn large too.
  Image frames = read_image(run / "trajectories.png", 1);
  Image three_by_three = image_grid(torch::zeros({9, 1, 28, 28}), 3, -1.0, 1.0);
  EXPECT_GE(frames.width, 800);
  EXPECT_GE(frames.height, three_by_three.height * (800 / three_by_three.width));

  for (std::string f : {"model.safetensors", "model-raw.safetensors", "metrics.csv", "config.toml"})
    EXPECT_TRUE(std::filesystem::exists(run / f)) << f;
  EXPECT_EQ(std::filesystem::exists(run / "loss.png"), plot::available());  // a chart (PATHLINE_CHARTS)
  auto summary = summary_of(run);
  EXPECT_GT(summary["train"]["gflops"].get<double>(), 0.0);
  EXPECT_GT(summary["train"]["samples_per_second"].get<double>(), 0.0);
  EXPECT_EQ(summary["sampling"]["nfe"], 4);
}

TEST(ImagesPipeline, SamplingUsesTheEmaWeightsUnlessAskedNotTo) {
  TempDir dir;
  // A high learning rate so that the raw weights run ahead of their average.
  run_job(tiny(kTinyUnet, {"train.lr=0.01", "train.steps=6"}), testing::builtin_registry(),
          JobOptions{dir / "run", false, false}, nullptr);
  auto& registry = testing::builtin_registry();
  const std::vector<std::string> fp32 = {"sample.n=10"};
  auto ema = sample_job(dir / "run", registry, fp32, dir / "ema", nullptr);
  auto again = sample_job(dir / "run", registry, fp32, dir / "ema-again", nullptr);
  auto raw = sample_job(dir / "run", registry, {"sample.n=10", "sample.use_ema=false"}, dir / "raw", nullptr);
  torch::Tensor a = read_npy(ema / "samples.npy"), b = read_npy(again / "samples.npy"),
                r = read_npy(raw / "samples.npy");
  EXPECT_TRUE(torch::equal(a, b));  // deterministic
  EXPECT_FALSE(torch::allclose(a, r, 1e-4, 1e-4));

  // The EMA file holds other weights than the raw file.
  Components with_ema = build_components(tiny(kTinyUnet), registry);
  Components with_raw = build_components(tiny(kTinyUnet), registry);
  load_weights(*with_ema.model, dir / "run/model.safetensors");
  load_weights(*with_raw.model, dir / "run/model-raw.safetensors");
  bool differs = false;
  auto pe = with_ema.model->parameters(), pr = with_raw.model->parameters();
  for (std::size_t i = 0; i < pe.size(); ++i) differs = differs || !torch::equal(pe[i], pr[i]);
  EXPECT_TRUE(differs);
}

TEST(ImagesPipeline, NoEmaWritesOnlyTheRawWeights) {
  TempDir dir;
  run_job(tiny(kTinyUnet, {"train.ema_decay=0", "train.steps=2"}), testing::builtin_registry(),
          JobOptions{dir / "run", false, false}, nullptr);
  EXPECT_TRUE(std::filesystem::exists(dir / "run/model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "run/model-raw.safetensors"));
}

TEST(ImagesPipeline, DitTrainsAndSamplesInBfloat16) {
  TempDir dir;
  PipelineConfig config =
      tiny(kTinyUnet, {"model.type=dit", "model.patch_size=7", "model.hidden=32", "model.depth=2",
                       "model.heads=2", "train.precision=bf16", "sample.precision=bf16"});
  EXPECT_EQ(config.component("model").type, "dit");
  run_job(config, testing::builtin_registry(), JobOptions{dir / "run", false, true}, nullptr);
  torch::Tensor samples = read_npy(dir / "run/samples.npy");
  EXPECT_EQ(samples.scalar_type(), torch::kFloat32);  // the solver's state stays float32
  EXPECT_EQ(samples.sizes(), (std::vector<std::int64_t>{20, 1, 28, 28}));
  EXPECT_TRUE(torch::isfinite(samples).all().item<bool>());
  auto summary = summary_of(dir / "run");
  EXPECT_TRUE(std::isfinite(summary["train"]["final_loss"].get<double>()));
}

TEST(ImagesPipeline, Bfloat16TrainingFollowsTheFloat32LossCurve) {
  // The same 16 steps in float32 and under bfloat16 autocast: the losses agree to a few percent,
  // and autocast really changed the arithmetic (they are not bit-equal).
  auto losses = [](const std::string& precision) {
    PipelineConfig config = tiny(kTinyUnet, {"train.precision=" + precision});
    Components c = build_components(config, testing::builtin_registry());
    Trainer trainer(config, c);
    std::vector<double> out;
    for (int k = 0; k < 16; ++k) out.push_back(trainer.step().item<double>());
    return out;
  };
  auto fp32 = losses("fp32"), bf16 = losses("bf16");
  double first = 0, last = 0, first_bf = 0, last_bf = 0;
  for (int k = 0; k < 5; ++k) first += fp32[k], first_bf += bf16[k];
  for (int k = 11; k < 16; ++k) last += fp32[k], last_bf += bf16[k];
  EXPECT_NEAR(first_bf / first, 1.0, 0.05);
  EXPECT_NEAR(last_bf / last, 1.0, 0.15);
  EXPECT_NE(fp32, bf16);
}

TEST(ImagesPipeline, GuidanceOnAnImageModel) {
  // w = 1 is exactly the conditional prediction; w = 2 is u + 2 (c - u) of the two predictions.
  PipelineConfig config = tiny(kTinyUnet, {"model.type=dit", "model.patch_size=4", "model.hidden=32",
                                           "model.depth=1", "model.heads=2"});
  Components c = build_components(config, testing::builtin_registry());
  {
    // A fresh DiT predicts zeros (adaLN-Zero); nudge every weight so that the label matters.
    torch::NoGradGuard no_grad;
    at::Generator gen = at::detail::createCPUGenerator(7);
    for (auto& p : c.model->parameters()) p.add_(torch::randn(p.sizes(), gen) * 0.05);
  }
  c.model->eval();
  torch::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(3);
  torch::Tensor x = torch::randn({4, 1, 28, 28}, gen);
  torch::Tensor labels = torch::tensor({0, 3, 5, 9}, torch::kInt64);
  torch::Tensor t = torch::full({4}, 0.4);
  torch::Tensor conditional = c.model->forward(x, t, Condition{labels});
  torch::Tensor unconditional =
      c.model->forward(x, t, Condition{torch::full({4}, kNullLabel, torch::kInt64)});
  ASSERT_FALSE(torch::allclose(conditional, unconditional, 1e-4, 1e-4));

  ModelField plain(*c.model, *c.path, *c.parameterization, 4, 1.0);
  plain.set_labels(labels);
  EXPECT_TRUE(torch::equal(plain.predict(Quantity::velocity, x, 0.4), conditional));
  ModelField guided(*c.model, *c.path, *c.parameterization, 4, 2.0);
  guided.set_labels(labels);
  EXPECT_TRUE(torch::allclose(guided.predict(Quantity::velocity, x, 0.4),
                              unconditional + 2.0 * (conditional - unconditional), 1e-5, 1e-5));
}

TEST(ImagesPipeline, RunLogReportsParametersMacsAndThroughput) {
  TempDir dir;
  testing::write_text(dir / "tiny.toml", kTinyUnet);
  // A metric with a floor (a classifier small enough to train in a second or two).
  auto r = testing::run_cli(
      "run tiny.toml --set train.steps=2 --set sample.n=10 --set metric[0].type=fd_fmnist "
      "--set metric[0].train_limit=300 --set metric[0].epochs=1 --set metric[0].cache_dir=cache",
      dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("model: unet, "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" parameters, "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("M multiply-accumulates per sample"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("GFLOP/s"), std::string::npos) << r.err;
  // The floor and the ratio beside the value, as summary.json has them.
  const auto details = summary_of(dir / "runs" / "tiny")["metric_details"]["fd_fmnist"]["details"];
  const double floor = details["floor"].get<double>(), ratio = details["ratio"].get<double>();
  EXPECT_NE(r.err.find(fmt::format("10 generated vs 10 reference samples; floor {:.6f}, {:.2f}x the floor)",
                                   floor, ratio)),
            std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace pathline
