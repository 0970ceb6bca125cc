// Pathline on a CUDA GPU: a 2D pipeline trained and sampled there, the same loss curve as on the
// CPU, bfloat16 autocast on image models, exact resume after a kill (the GPU's generator in the
// checkpoint), NCCL data parallelism, and what device = "auto" and "cuda" do with and without a GPU.
//
// The tests that need a GPU skip where CUDA sees none, saying why, so the suite runs everywhere;
// ctest's label `cuda` selects it (`ctest -L cuda`), and tools/gpu-check.sh runs it on a GPU machine.
#include <fmt/format.h>
#include <signal.h>

#include <nlohmann/json.hpp>

#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/engine/pipeline.hpp"
#include "pathline/engine/run.hpp"
#include "support/ranks.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

namespace fs = std::filesystem;
using testing::read_text;
using testing::run_cli;
using testing::TempDir;
using testing::write_text;

// [run] deterministic needs cuBLAS's fixed workspaces, and LibTorch reads the variable once, at this
// process's first matrix product (the `pathline` command sets it itself before its first). Set
// here, before main, for the in-process tests that train with deterministic = true.
[[maybe_unused]] const bool kCublasWorkspacesFixed =
    ::setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0) == 0;

int visible_gpus() { return cuda_visible() ? static_cast<int>(torch::cuda::device_count()) : 0; }

// Skips the test where CUDA sees fewer than `count` GPUs, with the reason.
#define REQUIRE_GPUS(count)                                                                               \
  do {                                                                                                    \
    if (const int visible = visible_gpus(); visible == 0)                                                 \
      GTEST_SKIP() << "no CUDA GPU visible: " << cuda_absence();                                          \
    else if (visible < (count))                                                                           \
      GTEST_SKIP() << "needs " << (count) << " CUDA GPUs, " << visible << (visible == 1 ? " is" : " are") \
                   << " visible";                                                                         \
  } while (false)

// A small 2D pipeline, [run] left to each test.
const char* k2d = R"([dataset]
type = "toy2d"
shape = "checkerboard"
[model]
type = "mlp"
width = 64
depth = 2
[train]
steps = 60
batch_size = 256
lr = 2e-3
log_every = 5
[solver]
type = "midpoint"
steps = 8
[sample]
n = 500
batch_size = 250
trajectories = 0
[[metric]]
type = "energy_distance"
)";

std::string with_run(const std::string& pipeline, const std::string& run) {
  return pipeline + "[run]\nthreads = 1\nseed = 3\n" + run;
}

PipelineConfig parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  ConfigOptions options;
  options.overrides = overrides;
  return parse_config(text, "cuda.toml", testing::builtin_registry(), options);
}

nlohmann::json summary_of(const fs::path& run) {
  return nlohmann::json::parse(read_text(run / "summary.json"));
}

// metrics.csv's losses, one per logged step.
std::vector<double> logged_losses(const fs::path& run) {
  std::vector<double> losses;
  const auto lines = testing::lines_of(read_text(run / "metrics.csv"));
  for (std::size_t i = 1; i < lines.size(); ++i) {  // after the header: step,loss,lr,elapsed_s
    const std::size_t comma = lines[i].find(',');
    losses.push_back(std::stod(lines[i].substr(comma + 1)));
  }
  return losses;
}

// The losses of `steps` training steps of `config`, in this process.
std::vector<double> step_losses(const PipelineConfig& config, int steps) {
  Components c = build_components(config, testing::builtin_registry());
  Trainer trainer(config, c);
  std::vector<double> losses;
  for (int k = 0; k < steps; ++k) losses.push_back(trainer.step().item<double>());
  return losses;
}

double largest_relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double largest = 0.0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    largest = std::max(largest, std::abs(a[i] - b[i]) / std::abs(a[i]));
  return largest;
}

// A stand-in for Fashion-MNIST that any machine can write: `count` 28x28 images, class k a bright
// square at a place of its own on a dim textured background, as the idx files the fashion_mnist data
// set reads (stored uncompressed, which zlib's gzread passes through).
void write_tiny_fashion_mnist(const fs::path& root, int count) {
  auto be32 = [](std::string& out, std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
  };
  std::string images, labels;
  be32(images, 0x803);
  be32(images, static_cast<std::uint32_t>(count));
  be32(images, 28);
  be32(images, 28);
  be32(labels, 0x801);
  be32(labels, static_cast<std::uint32_t>(count));
  for (int i = 0; i < count; ++i) {
    const int k = i % 10, top = 2 + (k / 4) * 8, left = 2 + (k % 4) * 6;
    labels.push_back(static_cast<char>(k));
    for (int y = 0; y < 28; ++y)
      for (int x = 0; x < 28; ++x) {
        const bool square = y >= top && y < top + 6 && x >= left && x < left + 6;
        images.push_back(static_cast<char>(square ? 255 : (i * 37 + x * y) % 40));
      }
  }
  fs::create_directories(root);
  write_text(root / "train-images-idx3-ubyte.gz", images);
  write_text(root / "train-labels-idx1-ubyte.gz", labels);
}

// A small conditional U-Net on the stand-in images, with dropout, so that training draws from the
// GPU's own generator (dropout masks) beside the CPU generators (data, noise, times, label dropout).
std::string tiny_unet(const fs::path& data) {
  return fmt::format(R"([dataset]
type = "fashion_mnist"
root = "{}"
[model]
type = "unet"
channels = 8
channel_mult = [1, 2]
attention_resolutions = [14]
heads = 2
dropout = 0.1
[train]
steps = 30
batch_size = 8
lr = 2e-3
lr_schedule = "cosine"
warmup_steps = 5
ema_decay = 0.9
checkpoint_every = 10
keep_checkpoints = 2
log_every = 5
[solver]
type = "midpoint"
steps = 2
[sample]
n = 10
batch_size = 10
trajectories = 0
)",
                     data.string());
}

// ------------------------------------------------------------------------------------------------
// Everywhere: what the device settings do with the GPUs this machine has, and with them hidden.

TEST(Cuda, AutoPicksTheGpuWhenOneIsVisibleElseTheCpu) {
  TempDir dir;
  write_text(dir / "p.toml", with_run(k2d, ""));  // device left at its default, "auto"
  const std::string expected = cuda_visible() ? "cuda:0" : "cpu";
  auto r = run_cli("run p.toml --run-dir run --set train.steps=10 --set sample.n=50", dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(summary_of(dir / "run")["platform"]["device"], expected);
  EXPECT_CONTAINS(r.err, "device: " + expected + ", ");

  // With every GPU hidden from CUDA, "auto" is the CPU on any machine.
  auto hidden = run_cli("run p.toml --run-dir hidden --set train.steps=10 --set sample.n=50", dir.path(),
                        "CUDA_VISIBLE_DEVICES=");
  ASSERT_EQ(hidden.code, 0) << hidden.err;
  EXPECT_EQ(summary_of(dir / "hidden")["platform"]["device"], "cpu");
}

TEST(Cuda, CudaWithoutAGpuIsRefusedNamingTheFileLineAndKey) {
  // Hidden GPUs: the refusal happens on a GPU machine too.
  TempDir dir;
  const std::string text = with_run(k2d, "device = \"cuda\"\n");
  write_text(dir / "p.toml", text);
  const auto line =
      std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(text.find("device =")), '\n') + 1;
  const std::string expected = fmt::format(
      "p.toml:{}:10: run.device = \"cuda\", but {}; use \"auto\" or \"cpu\"\n", line, cuda_absence());
  for (const std::string command : {"validate", "run"}) {
    auto r = run_cli(command + " p.toml", dir.path(), "CUDA_VISIBLE_DEVICES=");
    EXPECT_EQ(r.code, 2) << command;
    EXPECT_EQ(r.err, expected) << command;
    EXPECT_EQ(r.out, "") << command;
  }
  EXPECT_FALSE(fs::exists(dir / "runs"));  // nothing was written
}

// ------------------------------------------------------------------------------------------------
// On a GPU

TEST(Cuda, TrainsAndSamplesA2DPipelineOnTheGpu) {
  REQUIRE_GPUS(1);
  TempDir dir;
  write_text(dir / "p.toml", with_run(k2d, "device = \"cuda\"\n"));
  auto r = run_cli("run p.toml --run-dir run", dir.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_CONTAINS(r.err, "device: cuda:0, ");
  const auto summary = summary_of(dir / "run");
  EXPECT_EQ(summary["platform"]["device"], "cuda:0");
  const double final_loss = summary["train"]["final_loss"].get<double>();
  EXPECT_TRUE(std::isfinite(final_loss)) << final_loss;
  const auto losses = logged_losses(dir / "run");
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses.back(), losses.front());  // it learned something
  // The samples come back to the CPU, in the data's shape.
  torch::Tensor samples = read_npy(dir / "run/samples.npy");
  EXPECT_TRUE(samples.device().is_cpu());
  EXPECT_EQ(samples.sizes(), (std::vector<std::int64_t>{500, 2}));
  EXPECT_TRUE(torch::isfinite(samples).all().item<bool>());
  EXPECT_TRUE(std::isfinite(summary["metrics"]["energy_distance"].get<double>()));
}

TEST(Cuda, TheGpuFollowsTheCpusLossCurve) {
  REQUIRE_GPUS(1);
  // Every random draw (data, noise, times) comes from CPU generators and the weights are initialised
  // on the CPU, so both devices see the same batches from the same start. What may differ is the
  // arithmetic: cuBLAS sums the products in another order than the CPU's BLAS, the GPU's exp (SiLU,
  // the time features) rounds differently, and the CPU updates with the fused optimizer where the
  // GPU uses LibTorch's AdamW (the same formula, other roundings). Those start at 1e-7 relative and
  // grow slowly over 60 steps; another seed's batches move the curve by a few percent.
  at::set_num_threads(1);
  const std::string text = with_run(k2d, "");
  const auto cpu = step_losses(parse(text, {"run.device=cpu"}), 60);
  const auto gpu = step_losses(parse(text, {"run.device=cuda"}), 60);
  const auto other_seed = step_losses(parse(text, {"run.device=cpu", "run.seed=4"}), 60);
  const double difference = largest_relative_difference(cpu, gpu);
  EXPECT_LT(difference, 1e-3);
  EXPECT_GT(largest_relative_difference(cpu, other_seed), 10 * 1e-3);
  std::cerr << "largest relative difference of the 60 losses, GPU against CPU: " << difference << "\n";
}

TEST(Cuda, Bfloat16AutocastTrainsImageModels) {
  REQUIRE_GPUS(1);
  TempDir dir;
  write_tiny_fashion_mnist(dir / "data", 64);
  // The U-Net, and a DiT on 7x7 patches: the same 16 steps in float32 and under bfloat16 autocast on
  // the GPU; the losses are finite and agree to a few percent, and autocast changed the arithmetic.
  for (const std::vector<std::string>& model :
       {std::vector<std::string>{"model.dropout=0"},
        std::vector<std::string>{"model.type=dit", "model.patch_size=7", "model.hidden=32", "model.depth=2",
                                 "model.heads=2"}}) {
    SCOPED_TRACE(model.front());
    auto losses = [&](const std::string& precision) {
      std::vector<std::string> overrides = model;
      overrides.push_back("train.precision=" + precision);
      overrides.push_back("run.device=cuda");
      return step_losses(parse(with_run(tiny_unet(dir / "data"), ""), overrides), 16);
    };
    const auto fp32 = losses("fp32"), bf16 = losses("bf16");
    for (double loss : bf16) EXPECT_TRUE(std::isfinite(loss)) << loss;
    double first = 0, last = 0, first_bf = 0, last_bf = 0;
    for (int k = 0; k < 5; ++k) first += fp32[k], first_bf += bf16[k];
    for (int k = 11; k < 16; ++k) last += fp32[k], last_bf += bf16[k];
    EXPECT_NEAR(first_bf / first, 1.0, 0.05);
    EXPECT_NEAR(last_bf / last, 1.0, 0.15);
    EXPECT_NE(fp32, bf16);
  }
}

TEST(Cuda, SigkillThenResumeIsTheUninterruptedRun) {
  REQUIRE_GPUS(1);
  // As Checkpoints.SigkillMidStepThenResumeIsTheUninterruptedRun on the CPU, with a U-Net whose
  // dropout draws from the GPU's generator. Deterministic kernels: some of LibTorch's CUDA backward
  // passes (convolutions, the class embedding's) add up in a different order on each run otherwise.
  TempDir dir;
  write_tiny_fashion_mnist(dir / "data", 64);
  write_text(dir / "p.toml", with_run(tiny_unet(dir / "data"), "device = \"cuda\"\ndeterministic = true\n"));
  auto whole = run_cli("run p.toml --run-dir whole", dir.path());
  ASSERT_EQ(whole.code, 0) << whole.err;
  auto killed = run_cli("run p.toml --run-dir cut", dir.path(), "PATHLINE_FAULT=kill-in-step:17");
  EXPECT_TRUE(killed.code == 128 + SIGKILL || killed.code == -1) << killed.code << killed.err;
  EXPECT_FALSE(fs::exists(dir / "cut/summary.json"));
  auto resumed = run_cli("resume cut", dir.path());
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_CONTAINS(resumed.err, "resume: continuing from step 10 of 30");
  for (const char* file : {"samples.npy", "model.safetensors", "model-raw.safetensors"})
    EXPECT_TRUE(read_text(dir / "whole" / file) == read_text(dir / "cut" / file))
        << file << " differs from the uninterrupted run's";
  EXPECT_EQ(logged_losses(dir / "whole"), logged_losses(dir / "cut"));
  EXPECT_EQ(summary_of(dir / "cut")["platform"]["device"], "cuda:0");
}

TEST(Cuda, CheckpointsCarryTheGpuGeneratorThatDropoutDrawsFrom) {
  REQUIRE_GPUS(1);
  // In one process: the state after 5 steps, then 5 more steps. A trainer that loads the state
  // continues exactly; one whose GPU generator is reseeded after loading draws other dropout masks
  // and departs, so the equality depends on the GPU generator's state in the checkpoint.
  TempDir dir;
  write_tiny_fashion_mnist(dir / "data", 64);
  const PipelineConfig config =
      parse(with_run(tiny_unet(dir / "data"), "device = \"cuda\"\ndeterministic = true\n"));
  auto weights_after = [&](Trainer& trainer, Components& c) {
    for (int k = 0; k < 5; ++k) trainer.step();
    std::vector<torch::Tensor> out;
    for (const auto& p : c.model->parameters()) out.push_back(p.detach().cpu().clone());
    return out;
  };
  Components first = build_components(config, testing::builtin_registry());
  Trainer original(config, first);
  weights_after(original, first);
  NamedState out;
  original.save_state(out);
  const std::string state = out.encode("state");
  const auto reference = weights_after(original, first);

  auto continued = [&](bool reseed_gpu) {
    Components c = build_components(config, testing::builtin_registry());
    Trainer trainer(config, c);
    trainer.load_state(NamedState::decode(state, "state"), "state");
    if (reseed_gpu) {
      at::Generator gpu = at::globalContext().defaultGenerator(c.context.device);
      gpu.set_current_seed(12345);
    }
    return weights_after(trainer, c);
  };
  const auto resumed = continued(false), reseeded = continued(true);
  ASSERT_EQ(resumed.size(), reference.size());
  bool all_equal = true, reseeded_equal = true;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    EXPECT_TRUE(torch::equal(resumed[i], reference[i])) << "parameter " << i;
    all_equal = all_equal && torch::equal(resumed[i], reference[i]);
    reseeded_equal = reseeded_equal && torch::equal(reseeded[i], reference[i]);
  }
  EXPECT_TRUE(all_equal);
  EXPECT_FALSE(reseeded_equal) << "the GPU generator's state did not matter: is dropout on?";
}

TEST(Cuda, TwoNcclRanksWithHalfTheBatchMatchOneProcessWithTheWholeBatch) {
  REQUIRE_GPUS(2);
  // As Distributed.TwoRanksWithHalfTheBatchMatchOneProcessWithTheWholeBatch over Gloo, on two GPUs
  // over NCCL (rank r on GPU r). The tolerance is ten times the CPU's: cuBLAS picks other kernels for
  // half and whole batches, which sum in other orders.
  TempDir dir;
  const std::string text = with_run(k2d, "device = \"cuda\"\ntimeout = 60\n");
  write_text(dir / "p.toml", text);
  const std::string args = "train '" + (dir / "p.toml").string() + "' --run-dir '" + (dir / "run").string() +
                           "' --set train.steps=12 --set train.batch_size=64 --set train.lr=5e-3";
  pid_t zero = -1;
  const int port = testing::start_rank_zero(2, args, dir / "rank0.log", zero);
  const pid_t one = testing::start_cli(testing::rank_env(1, 2, port), args, dir / "rank1.log");
  ASSERT_EQ(testing::wait_exit(zero), 0) << read_text(dir / "rank0.log");
  ASSERT_EQ(testing::wait_exit(one), 0) << read_text(dir / "rank1.log");
  EXPECT_CONTAINS(read_text(dir / "rank0.log"), "data parallel: 2 ranks");

  const PipelineConfig config = parse(text, {"train.steps=12", "train.batch_size=64", "train.lr=5e-3"});
  Components c = build_components(config, testing::builtin_registry());
  Trainer trainer(config, c);
  trainer.simulate_ranks(2);
  for (int k = 0; k < 12; ++k) trainer.step();
  Components saved = build_components(load_config(dir / "run/config.toml", testing::builtin_registry()),
                                      testing::builtin_registry());
  load_weights(*saved.model, dir / "run" / run_weights_file(dir / "run", /*use_ema=*/false));
  const auto distributed = saved.model->parameters(), simulated = c.model->parameters();
  ASSERT_EQ(distributed.size(), simulated.size());
  for (std::size_t i = 0; i < simulated.size(); ++i) {
    const torch::Tensor a = distributed[i].detach().cpu(), b = simulated[i].detach().cpu();
    EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-4))
        << "parameter " << i << ": largest difference " << (a - b).abs().max().item<double>();
  }
  // And not what one rank's stream alone gives: the ranks drew different data.
  Components single = build_components(config, testing::builtin_registry());
  Trainer alone(config, single);
  for (int k = 0; k < 12; ++k) alone.step();
  EXPECT_FALSE(
      torch::allclose(single.model->parameters()[0].detach().cpu(), simulated[0].detach().cpu(), 1e-4, 1e-4));
}

}  // namespace
}  // namespace pathline
