// Data-parallel training over c10d/Gloo on loopback: two ranks against one process, a rank killed,
// `pathline launch`, resume after a kill, and the environment's rendezvous variables. On the CPU
// also where a GPU is visible (device = "auto" would put every rank on one; NCCL: test_cuda.cpp).
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <thread>

#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/distributed.hpp"
#include "pathline/engine/pipeline.hpp"
#include "pathline/engine/run.hpp"
#include "support/ranks.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

namespace fs = std::filesystem;
using testing::rank_env;
using testing::read_text;
using testing::run_cli;
using testing::start_cli;
using testing::start_rank_zero;
using testing::TempDir;
using testing::wait_exit;
using testing::write_text;

const char* kPipeline = R"(
[dataset]
type = "toy2d"
shape = "checkerboard"

[model]
type = "mlp"
width = 64
depth = 2

[train]
steps = 12
batch_size = 64
lr = 5e-3
ema_decay = 0.9
checkpoint_every = 5
log_every = 4

[solver]
type = "midpoint"
steps = 4

[sample]
n = 200
trajectories = 0

[run]
threads = 1
timeout = 20
device = "cpu"
)";

std::vector<torch::Tensor> run_weights(const fs::path& run,
                                       const std::string& file = "model-raw.safetensors") {
  PipelineConfig config = load_config(run / "config.toml", testing::builtin_registry());
  Components c = build_components(config, testing::builtin_registry());
  load_weights(*c.model, run / file);
  std::vector<torch::Tensor> weights;
  for (const auto& p : c.model->parameters()) weights.push_back(p.detach().clone());
  return weights;
}

TEST(Distributed, WorldComesFromTorchrunsVariables) {
  auto with = [](std::vector<std::pair<const char*, const char*>> vars, auto&& body) {
    for (const char* name :
         {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"})
      ::unsetenv(name);
    for (const auto& [name, value] : vars) ::setenv(name, value, 1);
    body();
    for (const auto& [name, value] : vars) ::unsetenv(name);
  };
  with({}, [] {
    WorldInfo w = world_from_environment();
    EXPECT_FALSE(w.distributed());
    EXPECT_EQ(w.rank, 0);
  });
  with({{"RANK", "3"},
        {"WORLD_SIZE", "4"},
        {"LOCAL_RANK", "1"},
        {"LOCAL_WORLD_SIZE", "2"},
        {"MASTER_ADDR", "node0"},
        {"MASTER_PORT", "1234"}},
       [] {
         WorldInfo w = world_from_environment();
         EXPECT_TRUE(w.distributed());
         EXPECT_EQ(w.rank, 3);
         EXPECT_EQ(w.world_size, 4);
         EXPECT_EQ(w.local_rank, 1);
         EXPECT_EQ(w.local_world_size, 2);
         EXPECT_EQ(w.master_addr, "node0");
         EXPECT_EQ(w.master_port, 1234);
       });
  with({{"RANK", "2"}, {"WORLD_SIZE", "2"}}, [] {
    EXPECT_EQ(testing::input_error_of([] { world_from_environment(); }),
              "environment variable RANK=2 is not below WORLD_SIZE=2");
  });
  with({{"WORLD_SIZE", "two"}}, [] {
    EXPECT_EQ(testing::input_error_of([] { world_from_environment(); }),
              "environment variable WORLD_SIZE='two': expected an integer of at least 1");
  });
  with({{"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}, [] {
    EXPECT_EQ(testing::input_error_of([] { world_from_environment(); }),
              "environment variable MASTER_PORT=70000: not a TCP port");
  });
}

TEST(Distributed, TwoRanksWithHalfTheBatchMatchOneProcessWithTheWholeBatch) {
  ASSERT_TRUE(distributed_available());
  // A small MLP (one gradient bucket), in one and in two micro-batches per rank, and one of 1.3 M
  // parameters (two 4 MB buckets, the first all-reduced while the backward pass goes on; a smaller
  // learning rate, as Adam turns the ranks' different summation order into differences of about
  // lr x 1e-2 on the weights with the most gradient noise).
  for (const auto& [width, accumulate] : std::vector<std::pair<int, int>>{{64, 1}, {64, 2}, {800, 1}}) {
    SCOPED_TRACE("width " + std::to_string(width) + ", accumulate " + std::to_string(accumulate));
    TempDir dir;
    write_text(dir / "p.toml", kPipeline);
    const std::string lr = width > 100 ? "1e-3" : "5e-3", depth = width > 100 ? "3" : "2";
    const std::string set = " --set model.width=" + std::to_string(width) + " --set model.depth=" + depth +
                            " --set train.accumulate=" + std::to_string(accumulate) + " --set train.lr=" + lr;
    const std::string args =
        "train '" + (dir / "p.toml").string() + "' --run-dir '" + (dir / "run").string() + "'" + set;
    pid_t zero = -1;
    const int port = start_rank_zero(2, args, dir / "rank0.log", zero);
    pid_t one = start_cli(rank_env(1, 2, port), args, dir / "rank1.log");
    ASSERT_EQ(wait_exit(zero), 0) << read_text(dir / "rank0.log");
    ASSERT_EQ(wait_exit(one), 0) << read_text(dir / "rank1.log");
    EXPECT_EQ(read_text(dir / "rank1.log"), "");  // rank 1 says nothing and writes nothing
    EXPECT_CONTAINS(read_text(dir / "rank0.log"), "data parallel: 2 ranks");

    // One process, every rank's share drawn from that rank's stream, as one batch.
    ConfigOptions options;
    options.overrides = {"model.width=" + std::to_string(width), "model.depth=" + depth,
                         "train.accumulate=" + std::to_string(accumulate), "train.lr=" + lr};
    PipelineConfig config = parse_config(kPipeline, "p.toml", testing::builtin_registry(), options);
    at::set_num_threads(1);
    Components c = build_components(config, testing::builtin_registry());
    Trainer trainer(config, c);
    trainer.simulate_ranks(2);
    for (int k = 0; k < 12; ++k) trainer.step();
    auto distributed = run_weights(dir / "run");
    auto ema = run_weights(dir / "run", "model.safetensors");
    auto params = c.model->parameters();
    ASSERT_EQ(distributed.size(), params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      EXPECT_TRUE(torch::allclose(distributed[i], params[i].detach(), 1e-5, 1e-5))
          << "parameter " << i << ": largest difference "
          << (distributed[i] - params[i]).abs().max().item<double>();
      EXPECT_TRUE(torch::allclose(ema[i], trainer.ema_weights()[i], 1e-5, 1e-5)) << "EMA " << i;
    }
    // And not what one rank's stream alone gives: the ranks drew different data.
    Components single = build_components(config, testing::builtin_registry());
    Trainer alone(config, single);
    for (int k = 0; k < 12; ++k) alone.step();
    EXPECT_FALSE(torch::allclose(single.model->parameters()[0], params[0], 1e-4, 1e-5));
  }
}

TEST(Distributed, AKilledRankStopsTheOthersWithinTheTimeout) {
  TempDir dir;
  write_text(dir / "p.toml", kPipeline);
  const std::string args = "train '" + (dir / "p.toml").string() + "' --run-dir '" + (dir / "run").string() +
                           "' --set train.steps=1000000 --set train.checkpoint_every=20 --set run.timeout=5";
  pid_t zero = -1;
  const int port = start_rank_zero(2, args, dir / "rank0.log", zero);
  pid_t one = start_cli(rank_env(1, 2, port), args, dir / "rank1.log");
  // Training is under way once rank 0 has written a checkpoint.
  const auto start = std::chrono::steady_clock::now();
  while (!fs::exists(dir / "run/checkpoints") || fs::is_empty(dir / "run/checkpoints")) {
    ASSERT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(60))
        << read_text(dir / "rank0.log");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(one, SIGKILL);
  const auto killed = std::chrono::steady_clock::now();
  EXPECT_EQ(wait_exit(one), 128 + SIGKILL);
  const int code = wait_exit(zero);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_EQ(code, 1);
  // That the timeout is what stopped rank 0 is in its message (below); the bound only tells a hang
  // from a stop, with room for a machine busy with other tests.
  EXPECT_LT(seconds, 120.0);
  const std::string log = read_text(dir / "rank0.log");
  EXPECT_CONTAINS(log, "rank 0: data-parallel");
  EXPECT_CONTAINS(log, "; rank 1 stopped, hangs or cannot be reached ([run] timeout = 5 s)");
  // The last checkpoint is whole: resuming it on one process reads it.
  CheckpointStore store(dir / "run", 2);
  auto latest = store.latest_good(Logger());
  ASSERT_TRUE(latest.has_value());
  EXPECT_GE(latest->step, 20);
}

TEST(Distributed, LaunchRunsTheQuickstartOnTwoRanksToTheSameQuality) {
  TempDir dir;
  const std::string quickstart = std::string(PATHLINE_SOURCE_DIR) + "/configs/quickstart.toml";
  const std::string settings =
      " --set train.steps=600 --set train.batch_size=256 --set sample.n=2000 "
      "--set sample.trajectories=0 --set run.threads=1 --set run.device=cpu";
  auto two = run_cli("launch --nproc-per-node 2 --master-port 0 -- run '" + quickstart + "' --run-dir '" +
                     (dir / "two").string() + "'" + settings);
  ASSERT_EQ(two.code, 0) << two.err;
  EXPECT_EQ(two.out, (dir / "two").string() + "\n");  // only rank 0 names its run
  auto one = run_cli("run '" + quickstart + "' --run-dir '" + (dir / "one").string() + "'" + settings);
  ASSERT_EQ(one.code, 0) << one.err;
  auto score = [&](const std::string& run) {
    return nlohmann::json::parse(read_text(dir / run / "summary.json"))["metrics"]["energy_distance"]
        .get<double>();
  };
  const double distributed = score("two"), single = score("one");
  // An untrained model scores about 1; 600 steps at batch 256 reach a few hundredths.
  EXPECT_LT(distributed, 0.05) << "one process: " << single;
  std::cerr << "energy distance: 2 ranks " << distributed << ", 1 process " << single << "\n";
  EXPECT_LT(distributed, 3.0 * single + 0.005) << "one process: " << single;
}

TEST(Distributed, LaunchEndsWithTheFirstFailingRanksStatus) {
  auto missing = run_cli("launch --nproc-per-node 2 --master-port 0 -- run /nonexistent/p.toml");
  EXPECT_EQ(missing.code, 2);
  EXPECT_CONTAINS(missing.err, "exited with status 2");
  EXPECT_CONTAINS(missing.err, "/nonexistent/p.toml");
  auto nothing = run_cli("launch --nproc-per-node 2");
  EXPECT_EQ(nothing.code, 2);
  EXPECT_CONTAINS(nothing.err, "nothing to launch");
  auto other = run_cli("launch --nproc-per-node 2 -- sample runs/x");
  EXPECT_EQ(other.code, 2);
  EXPECT_CONTAINS(other.err, "launch runs 'run', 'train' or 'resume' on every rank, not 'sample'");
}

TEST(Distributed, ResumeAfterAKillContinuesExactlyWithTheSameRanks) {
  TempDir dir;
  write_text(dir / "p.toml", kPipeline);
  const std::string base = " --set train.steps=30 --set train.checkpoint_every=10";
  auto whole = run_cli("launch --nproc-per-node 2 --master-port 0 -- train '" + (dir / "p.toml").string() +
                       "' --run-dir '" + (dir / "whole").string() + "'" + base);
  ASSERT_EQ(whole.code, 0) << whole.err;
  // Both ranks die in step 17 (after the checkpoint of step 10).
  auto killed = run_cli("launch --nproc-per-node 2 --master-port 0 -- train '" + (dir / "p.toml").string() +
                            "' --run-dir '" + (dir / "cut").string() + "'" + base,
                        {}, "PATHLINE_FAULT=kill-in-step:17");
  EXPECT_NE(killed.code, 0);
  auto resumed =
      run_cli("launch --nproc-per-node 2 --master-port 0 -- resume '" + (dir / "cut").string() + "'");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_CONTAINS(resumed.err, "resume: continuing from step 10 of 30");
  auto a = run_weights(dir / "whole"), b = run_weights(dir / "cut");
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i;
  EXPECT_EQ(read_text(dir / "whole/metrics.csv").substr(0, 40),
            read_text(dir / "cut/metrics.csv").substr(0, 40));

  // On one process instead: said, and it finishes.
  auto cut_again =
      run_cli("launch --nproc-per-node 2 --master-port 0 -- train '" + (dir / "p.toml").string() +
                  "' --run-dir '" + (dir / "cut2").string() + "'" + base,
              {}, "PATHLINE_FAULT=kill-in-step:17");
  EXPECT_NE(cut_again.code, 0);
  auto single = run_cli("resume '" + (dir / "cut2").string() + "'");
  ASSERT_EQ(single.code, 0) << single.err;
  EXPECT_CONTAINS(single.err, "the checkpoint was written by 2 rank(s), this run has 1");
}

}  // namespace
}  // namespace pathline
