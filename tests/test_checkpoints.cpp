// Training that survives: checkpoint files, resume after SIGKILL at several moments (mid-step,
// mid-write, at a random time), SIGINT/SIGTERM, corrupt checkpoints, changed keys, bad numbers, and
// the optimisation options.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <sstream>
#include <thread>

#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/engine/pipeline.hpp"
#include "process.hpp"
#include "support/support.hpp"

namespace pathline {
namespace {

namespace fs = std::filesystem;
using testing::read_text;
using testing::run_cli;
using testing::TempDir;

// A tiny 2D pipeline that still has everything a checkpoint must carry: EMA, a cosine schedule with
// warm-up, label-free data drawn from the training generator, dropout-free MLP. One thread, so that
// a resumed run can be compared byte for byte.
const char* kPipeline = R"(
[dataset]
type = "toy2d"
shape = "checkerboard"

[model]
type = "mlp"
width = 64
depth = 2

[train]
steps = 120
batch_size = 128
lr = 2e-3
lr_schedule = "cosine"
warmup_steps = 10
checkpoint_every = 20
keep_checkpoints = 2
log_every = 10

[solver]
type = "midpoint"
steps = 8

[sample]
n = 500
batch_size = 250
trajectories = 0

[run]
threads = 1
seed = 3

[[metric]]
type = "energy_distance"
)";

class Checkpoints : public testing::FolderTest {
 protected:
  void SetUp() override { testing::write_text(path("pipeline.toml"), kPipeline); }

  // The uninterrupted run everything is compared with (made once per test that needs it).
  fs::path reference() {
    fs::path dir = path("reference");
    auto r = run_cli("run '" + path("pipeline.toml").string() + "' --run-dir '" + dir.string() + "'");
    EXPECT_EQ(r.code, 0) << r.err;
    return dir;
  }

  static void expect_same_result(const fs::path& a, const fs::path& b) {
    for (const char* file : {"samples.npy", "model.safetensors", "model-raw.safetensors"}) {
      ASSERT_TRUE(fs::exists(b / file)) << b / file;
      EXPECT_TRUE(read_text(a / file) == read_text(b / file))
          << file << " differs from the uninterrupted run's";
    }
    // metrics.csv: the same steps and losses (the elapsed column is wall time).
    auto rows = [](const fs::path& f) {
      std::vector<std::string> out;
      for (const auto& line : testing::lines_of(read_text(f))) out.push_back(line.substr(0, line.rfind(',')));
      return out;
    };
    EXPECT_EQ(rows(a / "metrics.csv"), rows(b / "metrics.csv"));
  }

  std::string run_args(const fs::path& dir) const {
    return "run '" + path("pipeline.toml").string() + "' --run-dir '" + dir.string() + "'";
  }
};

// A child process we can signal: `pathline ARGS...` with stderr into a file (the command line's own
// process helper starts it).
struct Child {
  pid_t pid = -1;
  fs::path err;
  Child(const std::vector<std::string>& args, const fs::path& err_file) : err(err_file) {
    process::Spec spec;
    spec.program = PATHLINE_CLI;
    spec.args = args;
    spec.out = "/dev/null";
    spec.err = err_file;
    pid = process::spawn(spec);
  }
  // Waits; returns the exit code, or 128 + signal when killed by one.
  int wait() { return process::wait(pid).code; }
};

// Polls `done` every 2 ms for at most `limit`; false (and a test failure naming `what`) if it never
// held, so a child that died early fails the test instead of hanging it.
template <class Done>
bool wait_until(Done done, const std::string& what, std::chrono::seconds limit = std::chrono::seconds(300)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) {
      ADD_FAILURE() << "gave up waiting for " << what << " after " << limit.count() << " s";
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

std::size_t checkpoint_count(const fs::path& run) {
  std::error_code ec;
  if (!fs::is_directory(run / "checkpoints", ec)) return 0;
  std::size_t n = 0;
  for (const auto& e : fs::directory_iterator(run / "checkpoints", ec))
    n += e.path().extension() == ".ckpt" ? 1 : 0;
  return n;
}

// ------------------------------------------------------------------------------------------------
// Files

TEST(CheckpointFile, RoundTripAndEveryKindOfDamageIsNamed) {
  TempDir dir;
  CheckpointStore store(dir.path(), 2);
  const std::string payload = "the training state, whatever its bytes \x01\x02\x00 are";
  fs::path file = store.save(40, std::string(payload.data(), payload.size() + 0));
  EXPECT_EQ(file.filename(), "step-00000040.ckpt");
  Checkpoint c = read_checkpoint(file);
  EXPECT_EQ(c.step, 40);
  EXPECT_EQ(c.payload, payload);

  const std::string bytes = read_text(file);
  auto message_for = [&](const std::string& damaged) {
    testing::write_text(dir / "damaged.ckpt", damaged);
    try {
      read_checkpoint(dir / "damaged.ckpt");
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string where = (dir / "damaged.ckpt").string() + ": corrupt checkpoint: ";
  EXPECT_EQ(message_for(bytes.substr(0, 20)),
            where + "truncated (20 bytes, shorter than its 40-byte header)");
  EXPECT_EQ(message_for(bytes.substr(0, bytes.size() - 3)),
            where + fmt::format("truncated ({} payload bytes, the header says {})", payload.size() - 3,
                                payload.size()));
  EXPECT_EQ(message_for(bytes + "xyz"),
            where + fmt::format("trailing bytes ({} payload bytes, the header says {})", payload.size() + 3,
                                payload.size()));
  std::string flipped = bytes;
  flipped[flipped.size() - 5] ^= 0x10;
  EXPECT_EQ(message_for(flipped), where + "checksum mismatch (the data was altered or partly written)");
  std::string header = bytes;
  header[17] ^= 0x01;  // the step
  EXPECT_EQ(message_for(header), where + "header checksum mismatch");
  EXPECT_EQ(message_for("PK\x03\x04 a zip file, say, that is long enough to have a header"),
            where + "not a Pathline checkpoint (bad magic)");
}

TEST(CheckpointFile, StoreKeepsTheNewestAndFallsBackPastCorruptOnes) {
  TempDir dir;
  CheckpointStore store(dir.path(), 2);
  for (int step : {10, 20, 30}) store.save(step, "state at " + std::to_string(step));
  auto all = store.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].first, 30);
  EXPECT_EQ(all[1].first, 20);

  // A temporary left by a killed writer is not a checkpoint, and resume clears it away.
  testing::write_text(store.folder() / ".step-00000040.ckpt.tmp.123.0", "half");
  EXPECT_EQ(store.list().size(), 2u);
  store.remove_temporaries();
  EXPECT_FALSE(fs::exists(store.folder() / ".step-00000040.ckpt.tmp.123.0"));

  // The newest is damaged: skipped (renamed aside, said), the previous one is used.
  std::string bytes = read_text(all[0].second);
  bytes.back() ^= 0x20;
  testing::write_text(all[0].second, bytes);
  std::vector<std::string> said;
  auto good = store.latest_good([&](const std::string& line) { said.push_back(line); });
  ASSERT_TRUE(good.has_value());
  EXPECT_EQ(good->step, 20);
  EXPECT_EQ(good->payload, "state at 20");
  ASSERT_EQ(said.size(), 2u);
  EXPECT_NE(said[0].find("step-00000030.ckpt: corrupt checkpoint: checksum mismatch"), std::string::npos)
      << said[0];
  EXPECT_NE(said[0].find("renamed to step-00000030.ckpt.corrupt"), std::string::npos) << said[0];
  EXPECT_NE(said[1].find("falling back to the previous good checkpoint"), std::string::npos) << said[1];
  EXPECT_TRUE(fs::exists(store.folder() / "step-00000030.ckpt.corrupt"));
  EXPECT_EQ(store.list().size(), 1u);
}

TEST(CheckpointFile, TrainingKeysLeaveSamplingAndLoggingFree) {
  const Registry& registry = testing::builtin_registry();
  PipelineConfig a = parse_config(kPipeline, "a.toml", registry);
  ConfigOptions options;
  options.overrides = {"sample.n=7",
                       "solver.type=heun",
                       "train.log_every=5",
                       "train.checkpoint_every=3",
                       "train.on_nonfinite=skip",
                       "run.threads=2",
                       "metric[0].samples=10"};
  PipelineConfig b = parse_config(kPipeline, "a.toml", registry, options);
  EXPECT_EQ(training_keys(a), training_keys(b));
  EXPECT_EQ(config_hash(training_keys(a)), config_hash(training_keys(b)));

  options.overrides = {"train.lr=0.003", "model.width=32", "run.seed=4"};
  PipelineConfig c = parse_config(kPipeline, "a.toml", registry, options);
  EXPECT_NE(config_hash(training_keys(a)), config_hash(training_keys(c)));
  EXPECT_EQ(
      changed_keys(training_keys(a), training_keys(c)),
      (std::vector<std::string>{"model.width (64 -> 32)", "run.seed (3 -> 4)", "train.lr (0.002 -> 0.003)"}));
}

TEST(CheckpointFile, PayloadIsDataOnlyUnderNamesThatSayWhatEachTensorIs) {
  // A real run's checkpoint: safetensors bytes inside the frame, with the model, the optimizer's
  // moments per parameter, the EMA, every generator and the loop, and the training keys as text.
  TempDir dir;
  testing::write_text(dir / "p.toml", kPipeline);
  auto r = run_cli("train '" + (dir / "p.toml").string() + "' --run-dir '" + (dir / "run").string() +
                   "' --set train.steps=20 --set train.checkpoint_every=20");
  ASSERT_EQ(r.code, 0) << r.err;
  const Checkpoint c = read_checkpoint(dir / "run" / "checkpoints" / "step-00000020.ckpt");
  EXPECT_EQ(c.format, 2);
  const NamedState state = NamedState::decode(c.payload, c.file);
  for (const char* name : {"step", "model.net.0.weight", "model.freqs", "optimizer.net.0.weight.exp_avg",
                           "optimizer.net.0.weight.exp_avg_sq", "optimizer.net.0.weight.step",
                           "ema.net.0.weight", "generator.train", "generator.global", "loop.losses"})
    EXPECT_NE(state.find(name), nullptr) << name;
  EXPECT_EQ(state.at("step", "checkpoint").item<std::int64_t>(), 20);
  EXPECT_EQ(state.at("optimizer.net.0.weight.step", "checkpoint").item<std::int64_t>(), 20);
  EXPECT_CONTAINS(state.texts.at("training_keys"), "model.type = mlp\n");
  EXPECT_EQ(state.texts.at("pathline.checkpoint"), "2");
  // The same bytes any safetensors reader takes: the payload is a safetensors file.
  testing::write_text(dir / "payload.safetensors", c.payload);
  EXPECT_EQ(read_safetensors(dir / "payload.safetensors").size(), state.tensors.size());
  // A state that lacks a tensor is refused by name.
  EXPECT_CONTAINS(testing::input_error_of([&] { state.at("optimizer.nothing", "step-00000020.ckpt"); }),
                  "step-00000020.ckpt lacks 'optimizer.nothing'");
}

TEST(CheckpointFile, ModulesNamedAfterKeywordsTrainSampleAndResume) {
  // LibTorch's archive format could not read back a submodule called `in`: the run trained, and
  // then `pathline sample` failed with "expected ident but found 'in' here". Weights and checkpoints
  // are data only now: every command reads back whatever names a module gives its parts.
  TempDir dir;
  const std::string plugins = " --plugin-dir '" + std::string(PATHLINE_FIXTURE_DIR) + "/keyword-model'";
  testing::write_text(dir / "p.toml", std::string(kPipeline) + "\n");
  const std::string sets =
      " --set model.type=keyword_mlp --set train.steps=60 --set sample.n=200 --set train.checkpoint_every=20";
  auto ref = run_cli("run '" + (dir / "p.toml").string() + "' --run-dir '" + (dir / "ref").string() + "'" +
                     sets + plugins);
  ASSERT_EQ(ref.code, 0) << ref.err;
  auto sampled =
      run_cli("sample '" + (dir / "ref").string() + "' --out '" + (dir / "again").string() + "'" + plugins);
  ASSERT_EQ(sampled.code, 0) << sampled.err;
  EXPECT_TRUE(read_text(dir / "ref" / "samples.npy") == read_text(dir / "again" / "samples.npy"));
  auto raw = run_cli("sample '" + (dir / "ref").string() + "' --set sample.use_ema=false --out '" +
                     (dir / "raw").string() + "'" + plugins);
  ASSERT_EQ(raw.code, 0) << raw.err;
  EXPECT_CONTAINS(raw.err, "weights: the raw weights (model-raw.safetensors)");
  // Killed in the middle, resumed: the uninterrupted run, byte for byte.
  auto killed = run_cli("run '" + (dir / "p.toml").string() + "' --run-dir '" + (dir / "killed").string() +
                            "'" + sets + plugins,
                        {}, "PATHLINE_FAULT=kill-in-step:47");
  EXPECT_TRUE(killed.code == 137 || killed.code == -1) << killed.code << killed.err;
  auto resumed = run_cli("resume '" + (dir / "killed").string() + "'" + plugins);
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_CONTAINS(resumed.err, "resume: continuing from step 40 of 60");
  for (const char* file : {"model.safetensors", "model-raw.safetensors", "samples.npy"})
    EXPECT_TRUE(read_text(dir / "ref" / file) == read_text(dir / "killed" / file)) << file;
}

// ------------------------------------------------------------------------------------------------
// Kill and resume: every way of stopping ends, after `pathline resume`, where the uninterrupted run
// ends, byte for byte.

TEST_F(Checkpoints, SigkillMidStepThenResumeIsTheUninterruptedRun) {
  fs::path ref = reference();
  fs::path dir = path("killed");
  auto killed = run_cli(run_args(dir), {}, "PATHLINE_FAULT=kill-in-step:57");
  EXPECT_TRUE(killed.code == 137 || killed.code == -1) << killed.code << killed.err;
  EXPECT_FALSE(fs::exists(dir / "summary.json"));
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / "step-00000040.ckpt"));
  auto resumed = run_cli("resume '" + dir.string() + "'");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resume: continuing from step 40 of 120"), std::string::npos) << resumed.err;
  expect_same_result(ref, dir);
  auto summary = read_text(dir / "summary.json");
  EXPECT_NE(summary.find("\"resumed_from\": 40"), std::string::npos) << summary;
}

TEST_F(Checkpoints, SigkillMidCheckpointWriteKeepsThePreviousOne) {
  fs::path ref = reference();
  fs::path dir = path("killed");
  // The third checkpoint (step 60) is cut off half-way through its temporary file.
  auto killed = run_cli(run_args(dir), {}, "PATHLINE_FAULT=kill-in-checkpoint:3");
  EXPECT_TRUE(killed.code == 137 || killed.code == -1) << killed.code << killed.err;
  bool partial = false;  // the half-written temporary is there, under another name
  for (const auto& e : fs::directory_iterator(dir / "checkpoints"))
    partial = partial || e.path().filename().string().rfind(".step-00000060.ckpt.tmp.", 0) == 0;
  EXPECT_TRUE(partial);
  EXPECT_EQ(checkpoint_count(dir), 2u);
  EXPECT_FALSE(fs::exists(dir / "checkpoints" / "step-00000060.ckpt"));
  auto resumed = run_cli("resume '" + dir.string() + "'");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resume: continuing from step 40 of 120"), std::string::npos) << resumed.err;
  expect_same_result(ref, dir);
  for (const auto& e : fs::directory_iterator(dir / "checkpoints"))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos)
        << "stale temporary " << e.path();
}

TEST_F(Checkpoints, SigkillAtRandomMomentsThenResume) {
  fs::path ref = reference();
  fs::path dir = path("killed");
  // Random moments, from a seed that is printed (and can be given back: PATHLINE_TEST_SEED=...).
  unsigned seed = std::random_device{}();
  if (const char* given = std::getenv("PATHLINE_TEST_SEED")) seed = static_cast<unsigned>(std::stoul(given));
  std::printf("SigkillAtRandomMomentsThenResume: PATHLINE_TEST_SEED=%u\n", seed);
  SCOPED_TRACE("PATHLINE_TEST_SEED=" + std::to_string(seed));
  std::mt19937 random(seed);
  // Kill from outside at random moments, twice, resuming in between; then finish.
  Child first({"run", path("pipeline.toml").string(), "--run-dir", dir.string()}, path("err1"));
  if (!wait_until([&] { return checkpoint_count(dir) >= 1; }, "the first checkpoint"))
    ::kill(first.pid, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(random() % 300));
  ::kill(first.pid, SIGKILL);
  first.wait();
  Child second({"resume", dir.string()}, path("err2"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200 + random() % 300));
  ::kill(second.pid, SIGKILL);
  second.wait();
  auto resumed = run_cli("resume '" + dir.string() + "'");
  ASSERT_EQ(resumed.code, 0) << resumed.err << read_text(path("err1")) << read_text(path("err2"));
  expect_same_result(ref, dir);
}

TEST_F(Checkpoints, SigtermAndSigintCheckpointAndSayHowToResume) {
  // Long enough (a few seconds) that the signal lands in training.
  const std::vector<std::string> longer = {"--set", "train.steps=3000", "--set",
                                           "train.checkpoint_every=100"};
  fs::path ref = path("reference");
  auto r = run_cli(run_args(ref) + " --set train.steps=3000 --set train.checkpoint_every=100");
  ASSERT_EQ(r.code, 0) << r.err;
  for (int signal : {SIGTERM, SIGINT}) {
    fs::path dir = path(signal == SIGTERM ? "term" : "int");
    std::vector<std::string> args = {"run", path("pipeline.toml").string(), "--run-dir", dir.string()};
    args.insert(args.end(), longer.begin(), longer.end());
    Child child(args, path("err"));
    wait_until([&] { return checkpoint_count(dir) >= 1; }, "the first checkpoint");
    ::kill(child.pid, signal);
    const int code = child.wait();
    const std::string err = read_text(path("err"));
    EXPECT_EQ(code, 128 + signal) << err;
    EXPECT_NE(err.find(signal == SIGTERM ? "interrupted by SIGTERM after step"
                                         : "interrupted by SIGINT after step"),
              std::string::npos)
        << err;
    EXPECT_NE(err.find("continue with: pathline resume " + dir.string()), std::string::npos) << err;
    EXPECT_FALSE(fs::exists(dir / "summary.json"));
    auto resumed = run_cli("resume '" + dir.string() + "'");
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    expect_same_result(ref, dir);
  }
}

TEST_F(Checkpoints, ASecondSignalExitsAtOnceAndLeavesTheLastCheckpointWhole) {
  // Steps of a million points (about a second each), so the second signal lands inside the step the
  // first one asked to be the last: only the immediate exit can end the run before it completes.
  fs::path dir = path("twice");
  Child child(
      {"run", path("pipeline.toml").string(), "--run-dir", dir.string(), "--set", "train.steps=100000",
       "--set", "train.checkpoint_every=2", "--set", "train.batch_size=1000000"},
      path("err"));
  if (!wait_until([&] { return checkpoint_count(dir) >= 2; }, "two checkpoints")) ::kill(child.pid, SIGKILL);
  ::kill(child.pid, SIGINT);
  // The second signal only after the first was acknowledged: two at once could coalesce into one.
  wait_until(
      [&] { return read_text(path("err")).find("pathline: stopping after this step") != std::string::npos; },
      "the first signal's acknowledgement");
  ::kill(child.pid, SIGINT);
  EXPECT_EQ(child.wait(), 130) << read_text(path("err"));
  const std::string err = read_text(path("err"));
  EXPECT_NE(err.find("pathline: a second signal: exiting at once"), std::string::npos) << err;
  // The orderly stop would have said how to resume; the immediate exit says nothing more.
  EXPECT_EQ(err.find("continue with: pathline resume"), std::string::npos) << err;
  auto good = CheckpointStore(dir, 2).latest_good(nullptr);
  ASSERT_TRUE(good.has_value());
  EXPECT_GE(good->step, 4);
  EXPECT_EQ(checkpoint_count(dir), 2u);
}

TEST_F(Checkpoints, ResumeNeedsARunDirectory) {
  auto missing = run_cli("resume '" + path("nowhere").string() + "'");
  EXPECT_EQ(missing.code, 2);
  EXPECT_EQ(missing.err, "pathline resume: " + path("nowhere").string() +
                             ": no such run directory (see 'pathline resume --help')\n");
  fs::create_directories(path("empty"));
  auto empty = run_cli("resume '" + path("empty").string() + "'");
  EXPECT_EQ(empty.code, 2);
  EXPECT_NE(empty.err.find("not a run directory (no config.toml)"), std::string::npos) << empty.err;
  // A broken job.json is named, and nothing else is touched.
  fs::path dir = path("run");
  ASSERT_EQ(run_cli(run_args(dir) + " --set train.steps=30", {}, "").code, 0);
  testing::write_text(dir / "job.json", "{ not json");
  fs::remove(dir / "summary.json");
  auto broken = run_cli("resume '" + dir.string() + "'");
  EXPECT_EQ(broken.code, 1);
  EXPECT_NE(broken.err.find((dir / "job.json").string() + ": not valid JSON"), std::string::npos)
      << broken.err;
}

TEST_F(Checkpoints, CorruptLatestCheckpointFallsBackAndStillEndsTheSame) {
  fs::path ref = reference();
  fs::path dir = path("killed");
  auto killed = run_cli(run_args(dir), {}, "PATHLINE_FAULT=kill-in-step:75");
  ASSERT_TRUE(killed.code == 137 || killed.code == -1) << killed.code;
  const fs::path latest = dir / "checkpoints" / "step-00000060.ckpt";
  std::string bytes = read_text(latest);
  bytes.resize(bytes.size() / 2);  // truncated, as by a disk that lied about fsync
  testing::write_text(latest, bytes);
  auto resumed = run_cli("resume '" + dir.string() + "'");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find(latest.string() + ": corrupt checkpoint: truncated"), std::string::npos)
      << resumed.err;
  EXPECT_NE(resumed.err.find("falling back to the previous good checkpoint"), std::string::npos)
      << resumed.err;
  EXPECT_NE(resumed.err.find("continuing from step 40 of 120"), std::string::npos) << resumed.err;
  expect_same_result(ref, dir);
}

TEST_F(Checkpoints, ResumeRefusesChangedTrainingKeysAndAllowsSamplingKeys) {
  fs::path dir = path("killed");
  auto killed = run_cli(run_args(dir), {}, "PATHLINE_FAULT=kill-in-step:30");
  ASSERT_TRUE(killed.code == 137 || killed.code == -1) << killed.code;
  const std::string config_before = read_text(dir / "config.toml");
  auto refused = run_cli("resume '" + dir.string() + "' --set train.lr=0.01 --set model.width=32");
  EXPECT_EQ(refused.code, 1);
  EXPECT_NE(
      refused.err.find("cannot resume: training-relevant keys differ from checkpoint step-00000020.ckpt: "
                       "model.width (64 -> 32), train.lr (0.002 -> 0.01)"),
      std::string::npos)
      << refused.err;
  EXPECT_EQ(read_text(dir / "config.toml"), config_before);  // nothing was touched
  EXPECT_EQ(checkpoint_count(dir), 1u);

  auto resumed = run_cli("resume '" + dir.string() + "' --set sample.n=300 --set solver.type=heun");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(read_text(dir / "summary.json").find("\"solver\": \"heun\""), std::string::npos);
  // Done: a second resume has nothing to do.
  auto again = run_cli("resume '" + dir.string() + "'");
  EXPECT_EQ(again.code, 0);
  EXPECT_NE(again.err.find("is complete (120 steps trained); nothing to do"), std::string::npos) << again.err;
}

TEST_F(Checkpoints, ResumeWithoutCheckpointStartsOverAndTrainOnlyRunsStayTrainOnly) {
  fs::path ref = reference();
  fs::path dir = path("early");
  auto killed = run_cli(run_args(dir), {}, "PATHLINE_FAULT=kill-in-step:5");
  ASSERT_TRUE(killed.code == 137 || killed.code == -1) << killed.code;
  EXPECT_EQ(checkpoint_count(dir), 0u);
  auto resumed = run_cli("resume '" + dir.string() + "'");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("no checkpoint in"), std::string::npos) << resumed.err;
  expect_same_result(ref, dir);

  fs::path trained = path("train-only");
  auto t = run_cli("train '" + path("pipeline.toml").string() + "' --run-dir '" + trained.string() + "'", {},
                   "PATHLINE_FAULT=kill-in-step:50");
  ASSERT_TRUE(t.code == 137 || t.code == -1) << t.code;
  ASSERT_EQ(run_cli("resume '" + trained.string() + "'").code, 0);
  EXPECT_TRUE(fs::exists(trained / "model-raw.safetensors"));
  EXPECT_FALSE(fs::exists(trained / "samples.npy"));
  EXPECT_EQ(read_text(trained / "model.safetensors"), read_text(ref / "model.safetensors"));
}

TEST_F(Checkpoints, ImageRunWithEpochOrderDropoutAndBf16ResumesExactly) {
  // Fashion-MNIST's epoch order (64 images, 16 a batch: a new epoch every 4 steps), the U-Net's
  // dropout (LibTorch's global generator), label dropout and bfloat16 autocast, killed mid-step.
  testing::write_text(path("images.toml"), R"([run]
threads = 1
[dataset]
type = "fashion_mnist"
limit = 64
[model]
type = "unet"
channels = 8
channel_mult = [1, 2]
attention_resolutions = [7]
heads = 2
dropout = 0.1
[train]
steps = 12
batch_size = 16
precision = "bf16"
checkpoint_every = 5
log_every = 2
[solver]
type = "euler"
steps = 2
[sample]
n = 10
trajectories = 0
)");
  const std::string args = "run '" + path("images.toml").string() + "' --run-dir ";
  auto ref = run_cli(args + "'" + path("ref").string() + "'");
  ASSERT_EQ(ref.code, 0) << ref.err;
  auto killed = run_cli(args + "'" + path("killed").string() + "'", {}, "PATHLINE_FAULT=kill-in-step:8");
  ASSERT_TRUE(killed.code == 137 || killed.code == -1) << killed.code << killed.err;
  auto resumed = run_cli("resume '" + path("killed").string() + "'");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("continuing from step 5 of 12"), std::string::npos) << resumed.err;
  expect_same_result(path("ref"), path("killed"));
}

TEST_F(Checkpoints, NonFiniteLossStopsNamingTheStepOrIsSkipped) {
  // A learning rate of 1e30 sends the weights to 1e30 in one Adam step; the next forward overflows.
  fs::path dir = path("diverged");
  auto r = run_cli(run_args(dir) +
                   " --set train.lr=1e30 --set train.warmup_steps=0 --set train.checkpoint_every=1");
  EXPECT_EQ(r.code, 1);
  const auto lines = testing::lines_of(r.err);
  ASSERT_FALSE(lines.empty());
  const std::string& last = lines.back();
  EXPECT_EQ(last.find("pathline run: error: training stopped at step "), 0u) << last;
  EXPECT_TRUE(last.find("the loss is inf") != std::string::npos ||
              last.find("the loss is nan") != std::string::npos ||
              last.find("the gradient norm is") != std::string::npos)
      << last;
  EXPECT_NE(last.find("the last good checkpoint is kept: " + (dir / "checkpoints").string()),
            std::string::npos)
      << last;
  // The kept checkpoint is finite: the bad step never reached the weights.
  auto kept = CheckpointStore(dir, 2).latest_good(nullptr);
  ASSERT_TRUE(kept.has_value());

  fs::path skipping = path("skipping");
  auto s = run_cli(run_args(skipping) +
                   " --set train.lr=1e30 --set train.warmup_steps=0 --set train.on_nonfinite=skip");
  EXPECT_EQ(s.code, 0) << s.err;
  EXPECT_NE(s.err.find("non-finite batches skipped"), std::string::npos) << s.err;
  EXPECT_NE(read_text(skipping / "summary.json").find("\"skipped_batches\": "), std::string::npos);
}

TEST_F(Checkpoints, RunsWriteSafetensorsThatSampleAcceptsAndNumpyReads) {
  fs::path ref = reference();
  std::map<std::string, std::string> metadata;
  auto tensors = read_safetensors(ref / "model.safetensors", &metadata);
  EXPECT_EQ(metadata["pathline.model"], "mlp");
  EXPECT_EQ(metadata["pathline.weights"], "ema");
  ASSERT_FALSE(tensors.empty());
  EXPECT_EQ(tensors.front().first, "net.0.weight");
  // The same samples as the run's own (EMA) weights give.
  auto sampled = run_cli("sample '" + ref.string() + "' --weights '" + (ref / "model.safetensors").string() +
                         "' --out '" + path("from-safetensors").string() + "'");
  ASSERT_EQ(sampled.code, 0) << sampled.err;
  EXPECT_TRUE(read_text(path("from-safetensors") / "samples.npy") == read_text(ref / "samples.npy"));
  // The raw weights through --weights model-raw.safetensors differ from them.
  ASSERT_EQ(run_cli("sample '" + ref.string() + "' --weights '" + (ref / "model-raw.safetensors").string() +
                    "' --out '" + path("raw").string() + "'")
                .code,
            0);
  EXPECT_FALSE(read_text(path("raw") / "samples.npy") == read_text(ref / "samples.npy"));
  // Another model's file is refused, naming the file and the tensor.
  fs::path other = path("other");
  ASSERT_EQ(run_cli(run_args(other) + " --set model.width=32 --set train.steps=2 --set sample.n=10").code, 0);
  auto refused =
      run_cli("sample '" + ref.string() + "' --weights '" + (other / "model.safetensors").string() + "'");
  EXPECT_EQ(refused.code, 1);
  EXPECT_NE(
      refused.err.find((other / "model.safetensors").string() + ": tensor 'net.0.weight' is shaped [32, "),
      std::string::npos)
      << refused.err;
  // NumPy alone reads every tensor back bit-exactly (the format is checked in test_safetensors.cpp).
  if (const std::string python = testing::python_with({"numpy"}); !python.empty()) {
    const std::string script =
        "import json,struct,sys,numpy as np\n"
        "b=open(sys.argv[1],'rb').read();n=struct.unpack('<Q',b[:8])[0];h=json.loads(b[8:8+n]);h.pop('__"
        "metadata__')\n"
        "w=h['net.0.weight'];a=np.frombuffer(b[8+n+w['data_offsets'][0]:8+n+w['data_offsets'][1]],'<f4')\n"
        "print(len(h), w['shape'], float(a.astype(np.float64).sum()).hex())\n";
    testing::write_text(path("read.py"), script);
    const std::string cmd = "'" + python + "' '" + path("read.py").string() + "' '" +
                            (ref / "model.safetensors").string() + "' > '" + path("py.txt").string() + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    torch::Tensor w = tensors.front().second.to(torch::kFloat64);
    std::string expected = fmt::format("{} [{}, {}]", tensors.size(), w.size(0), w.size(1));
    EXPECT_EQ(read_text(path("py.txt")).find(expected), 0u) << read_text(path("py.txt"));
  }
}

// ------------------------------------------------------------------------------------------------
// Optimisation options

PipelineConfig small(std::vector<std::string> overrides) {
  ConfigOptions options;
  options.overrides = std::move(overrides);
  return parse_config(kPipeline, "small.toml", testing::builtin_registry(), options);
}

TEST(Optimisation, LinearDecayScheduleEndsAtZero) {
  PipelineConfig config = small({"train.lr_schedule=linear", "train.warmup_steps=20", "train.steps=120"});
  LearningRateSchedule schedule(config.table("train"));
  EXPECT_DOUBLE_EQ(schedule.at(9), 0.001);
  EXPECT_DOUBLE_EQ(schedule.at(20), 0.002);
  EXPECT_DOUBLE_EQ(schedule.at(70), 0.001);
  EXPECT_NEAR(schedule.at(119), 0.002 / 100.0, 1e-15);
}

TEST(Optimisation, AccumulationGivesTheSameUpdateAsTheWholeBatch) {
  auto after_steps = [](const std::string& accumulate) {
    PipelineConfig config = small({"train.accumulate=" + accumulate, "train.batch_size=96"});
    Components c = build_components(config, testing::builtin_registry());
    Trainer trainer(config, c);
    std::vector<double> losses;
    for (int k = 0; k < 3; ++k) losses.push_back(trainer.step().item<double>());
    std::vector<torch::Tensor> params;
    for (const auto& p : c.model->parameters()) params.push_back(p.detach().clone());
    return std::make_pair(losses, params);
  };
  auto [whole_loss, whole] = after_steps("1");
  auto [parts_loss, parts] = after_steps("4");
  auto [uneven_loss, uneven] = after_steps("5");  // 96 = 20 + 19 + 19 + 19 + 19
  for (int k = 0; k < 3; ++k) {
    EXPECT_NEAR(parts_loss[k], whole_loss[k], 1e-5 * whole_loss[k]);
    EXPECT_NEAR(uneven_loss[k], whole_loss[k], 1e-5 * whole_loss[k]);
  }
  for (std::size_t i = 0; i < whole.size(); ++i) {
    EXPECT_TRUE(torch::allclose(parts[i], whole[i], 1e-4, 1e-6)) << "parameter " << i;
    EXPECT_TRUE(torch::allclose(uneven[i], whole[i], 1e-4, 1e-6)) << "parameter " << i;
  }
  PipelineConfig too_many = small({"train.accumulate=200", "train.batch_size=96"});
  Components c = build_components(too_many, testing::builtin_registry());
  EXPECT_THROW(Trainer(too_many, c), InputError);
}

TEST(Optimisation, AdamAddsWeightDecayToTheGradientAdamWDecouplesIt) {
  // With a zero gradient direction removed by a huge decay: Adam's L2 term dominates the gradient, so
  // its first step is lr * sign(p) per coordinate; AdamW's is lr * adam(g) + lr * wd * p.
  auto first_step = [](const std::string& optimizer) {
    PipelineConfig config =
        small({"train.optimizer=" + optimizer, "train.weight_decay=1e6", "train.lr=0.01",
               "train.warmup_steps=0", "train.lr_schedule=constant", "train.ema_decay=0"});
    Components c = build_components(config, testing::builtin_registry());
    std::vector<torch::Tensor> before;
    for (const auto& p : c.model->parameters()) before.push_back(p.detach().clone());
    Trainer(config, c).step();
    auto after = c.model->parameters();
    return std::make_pair(before, std::vector<torch::Tensor>(after.begin(), after.end()));
  };
  auto [b, adam] = first_step("adam");
  // Adam: the update is -lr * sign(g + wd p) = -lr * sign(p) wherever |wd p| >> |g|.
  torch::Tensor w0 = b[0], w1 = adam[0].detach();
  torch::Tensor big = w0.abs() > 1e-3;
  EXPECT_TRUE(
      torch::allclose((w1 - w0).masked_select(big), (-0.01 * w0.sign()).masked_select(big), 1e-4, 1e-6));
  auto [b2, adamw] = first_step("adamw");
  // AdamW: p (1 - lr wd) = p (1 - 1e4): the decay dominates.
  torch::Tensor v1 = adamw[0].detach();
  EXPECT_TRUE(torch::allclose(v1, b2[0] * (1 - 0.01 * 1e6), 1e-3, 0.02));
}

TEST(Optimisation, FusedUpdateMatchesLibTorchsOptimizer) {
  // The fused pass computes Adam / AdamW, clipping and the EMA as LibTorch's optimizer and tensor
  // operations do: the same weights and EMA after several steps, up to float rounding.
  for (const std::string optimizer : {"adamw", "adam"}) {
    auto train = [&](bool fused) {
      PipelineConfig config = small({"train.optimizer=" + optimizer, "train.weight_decay=0.05",
                                     "train.lr=0.01", "train.grad_clip=0.5", "train.ema_decay=0.9",
                                     std::string("train.fused_optimizer=") + (fused ? "true" : "false")});
      Components c = build_components(config, testing::builtin_registry());
      Trainer trainer(config, c);
      EXPECT_EQ(trainer.fused(), fused);
      for (int k = 0; k < 6; ++k) trainer.step();
      std::vector<torch::Tensor> weights;
      for (const auto& p : c.model->parameters()) weights.push_back(p.detach().clone());
      for (const auto& e : trainer.ema_weights()) weights.push_back(e.clone());
      return weights;
    };
    auto fused = train(true), reference = train(false);
    ASSERT_EQ(fused.size(), reference.size());
    for (std::size_t i = 0; i < fused.size(); ++i) {
      EXPECT_TRUE(torch::allclose(fused[i], reference[i], 1e-5, 1e-6))
          << optimizer << " tensor " << i << ": largest difference "
          << (fused[i] - reference[i]).abs().max().item<double>();
      EXPECT_FALSE(torch::equal(fused[i], torch::zeros_like(fused[i])));
    }
  }
}

TEST(Optimisation, FusedOptimizerStateRoundTripsThroughACheckpoint) {
  // Steps 1-4, a checkpoint, steps 5-8 in a new trainer: the same weights as 8 steps in one.
  PipelineConfig config = small({"train.ema_decay=0.9", "train.weight_decay=0.01"});
  auto weights_of = [](Components& c) {
    std::vector<torch::Tensor> w;
    for (const auto& p : c.model->parameters()) w.push_back(p.detach().clone());
    return w;
  };
  Components whole = build_components(config, testing::builtin_registry());
  Trainer one(config, whole);
  for (int k = 0; k < 8; ++k) one.step();

  Components first = build_components(config, testing::builtin_registry());
  Trainer before(config, first);
  ASSERT_TRUE(before.fused());
  for (int k = 0; k < 4; ++k) before.step();
  NamedState out;
  before.save_state(out);
  const std::string bytes = out.encode("state");
  Components second = build_components(config, testing::builtin_registry());
  Trainer after(config, second);
  after.load_state(NamedState::decode(bytes, "state"), "state");
  for (int k = 0; k < 4; ++k) after.step();
  auto a = weights_of(whole), b = weights_of(second);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i;
  for (std::size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(torch::equal(one.ema_weights()[i], after.ema_weights()[i])) << "EMA " << i;
}

}  // namespace
}  // namespace pathline
