// Tests of latent flow matching: the autoencoder kind (plugin autoencoders: identity, conv_vae), a
// pipeline without [model] that trains one (weights, latent scale, reconstructions, metrics, exact
// resume), a flow pipeline on its latents (samples and pictures decoded), ablations across
// autoencoder.type, and the one-line errors for autoencoder runs that do not fit.
#include <nlohmann/json.hpp>

#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/config.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/engine/registry.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::read_text;
using testing::run_cli;

std::shared_ptr<Autoencoder> make_vae(const std::map<std::string, ParamValue>& changes) {
  const Registry& registry = testing::builtin_registry();
  BuildContext ctx;
  ctx.data.shape = {1, 28, 28};
  ctx.data.min_value = -1.0;
  ctx.data.max_value = 1.0;
  ctx.slot = "autoencoder";
  return registry.create<Autoencoder>(
      "conv_vae", testing::default_params(registry, Kind::autoencoder, "conv_vae", changes), ctx);
}

TEST(Latent, ConvVaeDeclaresItsLatentShapeAndRoundTripsShapes) {
  auto vae = make_vae(
      {{"padding", std::int64_t{2}}, {"downsample", std::int64_t{4}}, {"channels", std::int64_t{8}}});
  DataInfo data;
  data.shape = {1, 28, 28};
  data.num_classes = 10;
  const DataInfo latent = vae->latent(data);
  EXPECT_EQ(latent.shape, (std::vector<std::int64_t>{4, 8, 8}));
  EXPECT_EQ(latent.num_classes, 10);
  torch::Tensor x = torch::rand({3, 1, 28, 28}) * 2 - 1;
  Posterior q = vae->encode(x, {});
  EXPECT_EQ(q.mean.sizes().vec(), (std::vector<std::int64_t>{3, 4, 8, 8}));
  ASSERT_TRUE(q.log_variance.defined());
  EXPECT_EQ(vae->decode(q.mean, {}).sizes().vec(), x.sizes().vec());
  auto half = make_vae({{"downsample", std::int64_t{2}}, {"latent_channels", std::int64_t{3}}});
  EXPECT_EQ(half->latent(data).shape, (std::vector<std::int64_t>{3, 14, 14}));
  // Sizes that downsample does not divide, and downsample values other than 2 and 4.
  EXPECT_CONTAINS(testing::input_error_of([] {
                    make_vae({{"padding", std::int64_t{1}}});
                  }),
                  "the padded image is 30 x 30, which downsample = 4 does not divide");
  EXPECT_CONTAINS(testing::input_error_of([] {
                    make_vae({{"downsample", std::int64_t{3}}});
                  }),
                  "downsample = 3; it must be 2 or 4");
  // A batch of another shape is refused with the shape it expects.
  try {
    vae->decode(torch::zeros({2, 4, 7, 7}), {});
    ADD_FAILURE() << "decode took a latent of the wrong shape";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "expects a batch shaped [B, 4, 8, 8]");
  }
}

TEST(Latent, ConvVaeLossIsReconstructionPlusWeightedAnalyticKl) {
  auto vae =
      make_vae({{"channels", std::int64_t{4}}, {"kl_weight", 0.5}, {"reconstruction", std::string("mse")}});
  torch::Tensor x = torch::rand({4, 1, 28, 28}) * 2 - 1;
  at::Generator gen = at::detail::createCPUGenerator(7);
  AutoencoderLoss loss = vae->loss(x, {}, gen);
  ASSERT_TRUE(loss.parts.count("reconstruction") && loss.parts.count("kl"));
  // The KL of the encoder's posterior to N(0, I), per latent number.
  Posterior q = vae->encode(x, {});
  const double kl =
      (0.5 * (q.mean.square() + q.log_variance.exp() - 1 - q.log_variance)).mean().item<double>();
  EXPECT_NEAR(loss.parts.at("kl").item<double>(), kl, 1e-5);
  EXPECT_NEAR(loss.loss.item<double>(),
              loss.parts.at("reconstruction").item<double>() + 0.5 * loss.parts.at("kl").item<double>(),
              1e-5);
  // Its gradient reaches both halves.
  loss.loss.backward();
  double encoder = 0, decoder = 0;
  for (const auto& item : vae->named_parameters()) {
    const torch::Tensor& grad = item.value().grad();
    if (grad.defined())
      (item.key().rfind("encoder", 0) == 0 ? encoder : decoder) += grad.abs().sum().item<double>();
  }
  EXPECT_GT(encoder, 0);
  EXPECT_GT(decoder, 0);
}

// A tiny VAE on 64 Fashion-MNIST images, and a DiT on its latents.
class LatentRuns : public testing::FolderTest {
 protected:
  static constexpr const char* kVae = R"([run]
threads = 1
[dataset]
type = "fashion_mnist"
limit = 64
[autoencoder]
type = "conv_vae"
channels = 4
padding = 2
[train]
steps = 8
batch_size = 16
checkpoint_every = 3
log_every = 2
ema_decay = 0.9
[sample]
n = 30
[[metric]]
type = "energy_distance"
)";
  static std::string flow(const fs::path& vae_run) {
    return R"([run]
threads = 1
[dataset]
type = "fashion_mnist"
limit = 64
[autoencoder]
type = "conv_vae"
run = ")" + vae_run.string() +
           R"("
[model]
type = "dit"
patch_size = 2
hidden = 16
depth = 1
heads = 2
[train]
steps = 4
batch_size = 16
label_dropout = 0.1
[solver]
type = "euler"
steps = 3
[sample]
n = 12
trajectories = 4
guidance_scale = 1.5
[[metric]]
type = "energy_distance"
)";
  }

  fs::path train_vae(const std::string& name) {
    testing::write_text(path("vae.toml"), kVae);
    const fs::path dir = path(name);
    auto r = run_cli("run '" + path("vae.toml").string() + "' --run-dir '" + dir.string() + "'");
    EXPECT_EQ(r.code, 0) << r.err;
    return dir;
  }
};

TEST_F(LatentRuns, TrainsAnAutoencoderThenAFlowOnItsLatents) {
  const fs::path vae = train_vae("vae");
  for (const char* file : {"autoencoder.safetensors", "autoencoder-raw.safetensors", "reconstructions.png",
                           "reconstructions.npy", "labels.npy", "loss.png", "metrics.csv", "summary.json"})
    EXPECT_TRUE(fs::exists(vae / file)) << file;
  EXPECT_FALSE(fs::exists(vae / "model.safetensors"));
  std::map<std::string, std::string> metadata;
  read_safetensors(vae / "autoencoder.safetensors", &metadata);
  EXPECT_EQ(metadata["pathline.weights"], "ema");
  EXPECT_EQ(metadata["pathline.data_shape"], "[1, 28, 28]");
  EXPECT_EQ(metadata["pathline.latent_shape"], "[4, 8, 8]");
  const double scale = std::stod(metadata["pathline.latent_scale"]);
  EXPECT_GT(scale, 0.0);
  const json summary = json::parse(read_text(vae / "summary.json"));
  EXPECT_EQ(summary["autoencoder"]["latent_shape"], json({4, 8, 8}));
  EXPECT_DOUBLE_EQ(summary["autoencoder"]["latent_scale"].get<double>(),
                   std::stod(metadata["pathline.latent_scale"]));
  EXPECT_TRUE(summary["metrics"].contains("energy_distance"));
  EXPECT_EQ(read_npy(vae / "reconstructions.npy").sizes().vec(), (std::vector<std::int64_t>{30, 1, 28, 28}));
  // Its reconstructions' squared error is the one the summary reports.
  EXPECT_GT(summary["autoencoder"]["reconstruction_mse"].get<double>(), 0.0);
  // An autoencoder run has nothing to sample.
  auto sampled = run_cli("sample '" + vae.string() + "'");
  EXPECT_EQ(sampled.code, 1);
  ASSERT_EQ(testing::lines_of(sampled.err).size(), 1u) << sampled.err;
  EXPECT_CONTAINS(sampled.err, "an autoencoder run (its pipeline has no [model])");

  testing::write_text(path("flow.toml"), flow(vae));
  const fs::path run = path("flow");
  auto r = run_cli("run '" + path("flow.toml").string() + "' --run-dir '" + run.string() + "'");
  ASSERT_EQ(r.code, 0) << r.err;
  // Samples, labels and trajectories are images, decoded from the latents.
  EXPECT_EQ(read_npy(run / "samples.npy").sizes().vec(), (std::vector<std::int64_t>{12, 1, 28, 28}));
  EXPECT_TRUE(fs::exists(run / "samples.png"));
  EXPECT_TRUE(fs::exists(run / "trajectories.png"));
  EXPECT_TRUE(json::parse(read_text(run / "summary.json"))["metrics"].contains("energy_distance"));
  // The resolved config names the autoencoder run; sampling the run again decodes the same way.
  EXPECT_CONTAINS(read_text(run / "config.toml"), "run = \"" + vae.string() + "\"");
  auto again = run_cli("sample '" + run.string() + "' --out '" + path("again").string() + "'");
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(read_text(run / "samples.npy"), read_text(path("again") / "samples.npy"));

  // Given source points are latents, and what comes back is decoded to images.
  torch::Tensor noise = torch::randn({5, 4, 8, 8});
  write_npy(path("noise.npy"), noise);
  auto from_noise = run_cli("sample '" + run.string() + "' --noise '" + path("noise.npy").string() +
                            "' --out '" + path("n").string() + "'");
  ASSERT_EQ(from_noise.code, 0) << from_noise.err;
  EXPECT_EQ(read_npy(path("n") / "samples.npy").sizes().vec(), (std::vector<std::int64_t>{5, 1, 28, 28}));
  // Noise of the data's shape is not the flow's source.
  write_npy(path("pixels.npy"), torch::randn({5, 1, 28, 28}));
  auto pixels = run_cli("sample '" + run.string() + "' --noise '" + path("pixels.npy").string() +
                        "' --out '" + path("p").string() + "'");
  EXPECT_NE(pixels.code, 0);
  EXPECT_CONTAINS(pixels.err, "[n, 4, 8, 8]");

  // An ablation sweeps pixel space against the latent space: each variant trains.
  testing::write_text(path("ablate.toml"), flow(vae) + R"(
[ablation]
"autoencoder.type" = ["identity", "conv_vae"]
)");
  auto ablated =
      run_cli("ablate '" + path("ablate.toml").string() + "' --out '" + path("ablation").string() + "'");
  ASSERT_EQ(ablated.code, 0) << ablated.err;
  const std::string results = read_text(path("ablation") / "results.csv");
  EXPECT_CONTAINS(results, "identity");
  EXPECT_CONTAINS(results, "conv_vae");
}

TEST_F(LatentRuns, AutoencoderTrainingResumesExactlyAfterAKill) {
  const fs::path reference = train_vae("reference");
  const fs::path killed = path("killed");
  auto k = run_cli("run '" + path("vae.toml").string() + "' --run-dir '" + killed.string() + "'", {},
                   "PATHLINE_FAULT=kill-in-step:5");
  ASSERT_TRUE(k.code == 137 || k.code == -1) << k.code << k.err;
  auto resumed = run_cli("resume '" + killed.string() + "'");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_CONTAINS(resumed.err, "continuing from step 3 of 8");
  for (const char* file : {"autoencoder.safetensors", "autoencoder-raw.safetensors", "reconstructions.npy"})
    EXPECT_TRUE(read_text(reference / file) == read_text(killed / file)) << file << " differs";
}

TEST_F(LatentRuns, AutoencoderRunsThatDoNotFitAreOneLineErrors) {
  const fs::path vae = train_vae("vae");
  auto error_of = [&](const std::string& toml, const std::string& extra = "") {
    testing::write_text(path("bad.toml"), toml);
    auto r =
        run_cli("run '" + path("bad.toml").string() + "' --run-dir '" + path("out").string() + "'" + extra);
    EXPECT_EQ(r.code, 2) << r.err;  // a pipeline that cannot run
    EXPECT_EQ(testing::lines_of(r.err).size(), 1u) << r.err;
    EXPECT_FALSE(fs::exists(path("out"))) << "a run directory was made for a pipeline that cannot run";
    return r.err;
  };
  const std::string good = flow(vae);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string text = good;
    text.replace(text.find(from), from.size(), to);
    return text;
  };
  // A run that does not exist.
  const std::string nowhere = error_of(with(vae.string(), path("nowhere").string()));
  EXPECT_NE(nowhere.find(path("bad.toml").string() + ":8:"), std::string::npos) << nowhere;
  EXPECT_CONTAINS(nowhere, "[autoencoder] run = \"" + path("nowhere").string() + "\": no such run directory");
  // A flow run, not an autoencoder run.
  fs::create_directories(path("flowrun"));
  testing::write_text(path("flowrun") / "config.toml", good);
  EXPECT_CONTAINS(error_of(with(vae.string(), path("flowrun").string())),
                  "a flow run (its pipeline has a [model])");
  // One trained on other data.
  fs::create_directories(path("other"));
  fs::copy(vae / "autoencoder.safetensors", path("other") / "autoencoder.safetensors");
  const std::string other =
      "[dataset]\ntype = \"toy2d\"\n[autoencoder]\ntype = \"conv_vae\"\nchannels = 4\npadding = 2\n";
  testing::write_text(path("other") / "config.toml", other);
  EXPECT_CONTAINS(error_of(with(vae.string(), path("other").string())),
                  "that autoencoder was trained on dataset 'toy2d', but this pipeline's is 'fashion_mnist'");
  // A key the pipeline sets that the run trained with another value.
  EXPECT_CONTAINS(error_of(with("type = \"conv_vae\"\n", "type = \"conv_vae\"\nlatent_channels = 8\n")),
                  "[autoencoder] latent_channels = 8, but run \"" + vae.string() +
                      "\" trained it with latent_channels = 4");
  // A latent shape the model cannot take: patch 3 does not divide the 8 x 8 latent.
  EXPECT_CONTAINS(error_of(with("patch_size = 2", "patch_size = 3")),
                  "(the flow runs in the autoencoder's latent space, samples of shape [4, 8, 8])");
  // A trainable autoencoder without a run under a flow; an identity with nothing to train.
  EXPECT_CONTAINS(error_of(with("run = \"" + vae.string() + "\"\n", "")),
                  "must be trained before a flow can use it");
  EXPECT_CONTAINS(error_of("[dataset]\ntype = \"toy2d\"\n[autoencoder]\ntype = \"identity\"\n"),
                  "has nothing to train, and a pipeline without [model] trains its autoencoder");
  // A likelihood of the data from a latent flow.
  EXPECT_CONTAINS(error_of(good + "[[metric]]\ntype = \"nll\"\n"),
                  "[[metric]] (type 'nll') needs the flow to run on the data");
  // conv_vae on vectors.
  EXPECT_CONTAINS(error_of("[dataset]\ntype = \"toy2d\"\n[autoencoder]\ntype = \"conv_vae\"\n"),
                  "conv_vae: needs images shaped [channels, height, width]");
}

TEST_F(LatentRuns, IdentityAutoencoderLeavesTrainingBitForBit) {
  const std::string base = R"([run]
threads = 1
[dataset]
type = "toy2d"
shape = "moons"
[model]
type = "mlp"
width = 32
depth = 2
[train]
steps = 30
batch_size = 64
[sample]
n = 100
)";
  testing::write_text(path("plain.toml"), base);
  testing::write_text(path("identity.toml"),
                      base + "[autoencoder]\ntype = \"identity\"\nrun = \"ignored\"\n");
  for (const char* name : {"plain", "identity"}) {
    auto r = run_cli("run '" + path(std::string(name) + ".toml").string() + "' --run-dir '" +
                     path(name).string() + "'");
    ASSERT_EQ(r.code, 0) << r.err;
  }
  EXPECT_TRUE(read_text(path("plain") / "model.safetensors") ==
              read_text(path("identity") / "model.safetensors"));
  EXPECT_TRUE(read_text(path("plain") / "samples.npy") == read_text(path("identity") / "samples.npy"));
  // The same training keys as a pipeline without the slot: runs made before it resume.
  const Registry& registry = testing::builtin_registry();
  EXPECT_EQ(training_keys(load_config(path("plain.toml"), registry)),
            training_keys(load_config(path("identity.toml"), registry)));
}

}  // namespace
}  // namespace pathline
