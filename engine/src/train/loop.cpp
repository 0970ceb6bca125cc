// The training loop: checkpoints (writing, resuming, falling back past a bad one), signals (stop
// after a step, a second one exits at once), logging and progress.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "../device.hpp"
#include "../precision.hpp"
#include "optimizer.hpp"
#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/distributed.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/engine/random.hpp"
#include "pathline/engine/train.hpp"

namespace pathline {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ", nfe 32 per step" for the objective's statistics (means per step).
std::string statistics_text(const std::map<std::string, double>& statistics) {
  std::string text;
  for (const auto& [name, value] : statistics) text += fmt::format(", {} {:.4g} per step", name, value);
  return text;
}

}  // namespace

namespace {

// What the loop itself carries across a checkpoint, beside the trainer's state: metrics.csv so far,
// the logged losses (for loss.png) and the current logging window.
struct LoopState {
  std::string csv = "step,loss,lr,elapsed_s\n";
  std::vector<double> losses;
  std::vector<std::int64_t> logged;
  double window_sum = 0.0;
  std::int64_t window_n = 0;
  double elapsed = 0.0;  // training seconds before this process
  // The objective's statistics (Objective::statistics, in that order): sums over the logging window
  // (its window_n steps) and over every step so far (stat_steps of them), for metrics.csv's extra
  // columns and the run's means.
  std::vector<std::string> stat_names;
  std::vector<double> stat_window, stat_total;
  std::int64_t stat_steps = 0;

  void name_statistics(const std::vector<std::string>& names) {
    stat_names = names;
    stat_window.assign(names.size(), 0.0);
    stat_total.assign(names.size(), 0.0);
    for (const auto& name : names) csv.insert(csv.size() - 1, "," + name);
  }
};

// A checkpoint's payload (format 2): the trainer's state, the loop's, and the training keys it was
// written with, as one NamedState.
std::string checkpoint_payload(const Trainer& trainer, const LoopState& loop,
                               const std::map<std::string, std::string>& keys,
                               const std::filesystem::path& file) {
  NamedState state;
  trainer.save_state(state);
  state.texts["pathline.checkpoint"] = "2";
  state.texts["training_keys"] = training_keys_text(keys);
  state.texts["config_hash"] = config_hash(keys);
  state.texts["loop.csv"] = loop.csv;
  state.add("loop.losses", torch::tensor(loop.losses, torch::kFloat64));
  state.add("loop.logged", torch::tensor(loop.logged, torch::kInt64));
  state.add("loop.window", torch::tensor({loop.window_sum, static_cast<double>(loop.window_n), loop.elapsed},
                                         torch::kFloat64));
  if (!loop.stat_names.empty()) {
    std::vector<double> sums = loop.stat_window;
    sums.insert(sums.end(), loop.stat_total.begin(), loop.stat_total.end());
    sums.push_back(static_cast<double>(loop.stat_steps));
    state.add("loop.statistics", torch::tensor(sums, torch::kFloat64));
  }
  return state.encode(file);
}

// Format 1: a LibTorch archive (before Pathline 0.2).
torch::serialize::InputArchive open_legacy_payload(const Checkpoint& checkpoint) {
  torch::serialize::InputArchive archive;
  try {
    std::istringstream in(checkpoint.payload);
    archive.load_from(in);
  } catch (const c10::Error& e) {
    std::string reason = e.what_without_backtrace();
    throw InputError(checkpoint.file.string() +
                     ": unreadable checkpoint: " + reason.substr(0, reason.find('\n')));
  }
  return archive;
}

std::string read_string(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue value;
  archive.read(key, value);
  return value.toStringRef();
}

void restore_loop(LoopState& loop, const std::string& csv, const torch::Tensor& losses,
                  const torch::Tensor& logged, const torch::Tensor& window) {
  loop.csv = csv;
  const torch::Tensor l = losses.to(torch::kFloat64).contiguous(), g = logged.to(torch::kInt64).contiguous();
  loop.losses.assign(l.data_ptr<double>(), l.data_ptr<double>() + l.numel());
  loop.logged.assign(g.data_ptr<std::int64_t>(), g.data_ptr<std::int64_t>() + g.numel());
  const torch::Tensor w = window.to(torch::kFloat64).contiguous();
  if (w.numel() != 3)
    throw InputError("the checkpoint's loop.window holds " + std::to_string(w.numel()) + " values, not 3");
  loop.window_sum = w[0].item<double>();
  loop.window_n = static_cast<std::int64_t>(w[1].item<double>());
  loop.elapsed = w[2].item<double>();
}

// Restores the trainer and the loop from a checkpoint (InputError naming the file if it does not fit).
void restore(const Checkpoint& checkpoint, Trainer& trainer, LoopState& loop) {
  const std::string file = checkpoint.file.string();
  if (checkpoint.format >= 2) {
    const NamedState state = NamedState::decode(checkpoint.payload, checkpoint.file);
    trainer.load_state(state, file);
    auto csv = state.texts.find("loop.csv");
    if (csv == state.texts.end()) throw InputError(file + " lacks 'loop.csv'");
    restore_loop(loop, csv->second, state.at("loop.losses", file), state.at("loop.logged", file),
                 state.at("loop.window", file));
    if (const torch::Tensor* sums = state.find("loop.statistics")) {
      const std::size_t n = loop.stat_names.size();
      const torch::Tensor s = sums->to(torch::kFloat64).contiguous();
      if (static_cast<std::size_t>(s.numel()) != 2 * n + 1)
        throw InputError(
            fmt::format("{}: its loop.statistics holds {} values; this objective reports {} statistics", file,
                        s.numel(), n));
      const double* v = s.data_ptr<double>();
      loop.stat_window.assign(v, v + n);
      loop.stat_total.assign(v + n, v + 2 * n);
      loop.stat_steps = static_cast<std::int64_t>(v[2 * n]);
    }
  } else {
    torch::serialize::InputArchive archive = open_legacy_payload(checkpoint);
    try {
      torch::serialize::InputArchive state;
      archive.read("trainer", state);
      trainer.load_legacy_state(state);
      torch::Tensor losses, logged, window;
      archive.read("loop.losses", losses);
      archive.read("loop.logged", logged);
      archive.read("loop.window", window);
      restore_loop(loop, read_string(archive, "loop.csv"), losses, logged, window);
    } catch (const c10::Error& e) {
      std::string reason = e.what_without_backtrace();
      throw InputError(file +
                       ": checkpoint does not fit this pipeline: " + reason.substr(0, reason.find('\n')));
    }
  }
  if (trainer.steps_done() != checkpoint.step)
    throw InputError(fmt::format("{}: corrupt checkpoint: holds step {}, named step {}", file,
                                 trainer.steps_done(), checkpoint.step));
}

// SIGINT and SIGTERM while training: the first asks the loop to stop after the current step (and
// write a checkpoint); a second one exits at once. Every write is atomic, so the last checkpoint
// on disk stays whole either way.
volatile std::sig_atomic_t g_stop_signal = 0;

// Writes a message from a signal handler (write(2) is async-signal-safe; stdio is not).
void signal_safe_say(const char* text, std::size_t size) {
  while (size > 0) {
    const ssize_t written = ::write(STDERR_FILENO, text, size);
    if (written <= 0) return;
    text += written, size -= static_cast<std::size_t>(written);
  }
}

extern "C" void on_stop_signal(int signal) {
  if (g_stop_signal != 0) {
    static const char again[] = "\npathline: a second signal: exiting at once\n";
    signal_safe_say(again, sizeof(again) - 1);
    ::_exit(128 + signal);
  }
  g_stop_signal = signal;
  static const char first[] = "\npathline: stopping after this step (a second signal exits at once)\n";
  signal_safe_say(first, sizeof(first) - 1);
}

class SignalGuard {
 public:
  explicit SignalGuard(bool active) : active_(active) {
    if (!active_) return;
    g_stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGINT, &action, &old_int_);
    ::sigaction(SIGTERM, &action, &old_term_);
  }
  ~SignalGuard() {
    if (!active_) return;
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;

 private:
  bool active_;
  struct sigaction old_int_ {
  }, old_term_{};
};

std::string duration_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<std::int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{}:{:02d}", s / 60, s % 60);
}

}  // namespace

std::map<std::string, std::string> checkpoint_training_keys(const Checkpoint& checkpoint) {
  std::string text;
  if (checkpoint.format >= 2) {
    const NamedState state = NamedState::decode(checkpoint.payload, checkpoint.file);
    auto it = state.texts.find("training_keys");
    if (it == state.texts.end())
      throw InputError(checkpoint.file.string() + ": not a Pathline training checkpoint (no training_keys)");
    text = it->second;
  } else {
    torch::serialize::InputArchive archive = open_legacy_payload(checkpoint);
    try {
      text = read_string(archive, "training_keys");
    } catch (const c10::Error&) {
      throw InputError(checkpoint.file.string() + ": not a Pathline training checkpoint (no training_keys)");
    }
  }
  std::map<std::string, std::string> keys;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    auto eq = line.find(" = ");
    if (eq != std::string::npos) keys[line.substr(0, eq)] = line.substr(eq + 3);
  }
  return keys;
}

TrainResult train(const PipelineConfig& config, Components& c, const std::filesystem::path& run_dir,
                  const Logger& log, const TrainOptions& options) {
  const TrainSettings& tp = config.train;
  TrainResult result;
  const std::int64_t steps = tp.steps;
  // A pipeline without [model] trains its autoencoder (build_components checked that it can).
  const bool trainable = c.model ? c.model->trainable() : true;
  torch::nn::Module& trained =
      c.model ? static_cast<torch::nn::Module&>(*c.model) : static_cast<torch::nn::Module&>(*c.autoencoder);
  if (!trainable || steps == 0) {
    if (log)
      log(trainable ? "train: steps = 0, nothing to train"
                    : "train: the model has nothing to learn; skipping training");
    return result;
  }
  const std::int64_t log_every = tp.log_every, checkpoint_every = tp.checkpoint_every;
  const std::int64_t progress_every = tp.progress_every > 0 ? tp.progress_every : 5 * log_every;
  DataParallel* dp = options.data_parallel;
  Trainer trainer(config, c, dp ? static_cast<std::uint64_t>(dp->world().rank) : 0);
  if (dp) trainer.attach(*dp);
  const LearningRateSchedule schedule(tp);
  const auto keys = training_keys(config);
  const bool saving = !run_dir.empty();
  CheckpointStore store(run_dir, tp.keep_checkpoints);

  LoopState loop;
  if (c.model) loop.name_statistics(c.objective->statistics());
  if (options.resume_from) {
    restore(*options.resume_from, trainer, loop);
    result.resumed_from = trainer.steps_done();
    if (log)
      log(fmt::format("resume: continuing from step {} of {} ({})", trainer.steps_done(), steps,
                      options.resume_from->file.string()));
    if (log && trainer.resumed_world_size_mismatch() > 0)
      log(fmt::format(
          "resume: the checkpoint was written by {} rank(s), this run has {}: the weights, optimizer, "
          "EMA and schedule continue; each rank's data stream starts afresh (not an exact "
          "continuation)",
          trainer.resumed_world_size_mismatch(), dp ? dp->world().world_size : 1));
  }
  std::ofstream csv;
  if (saving) {
    write_file_atomic(run_dir / "metrics.csv", loop.csv);
    csv.open(run_dir / "metrics.csv", std::ios::app);
  }

  std::filesystem::path last_checkpoint =
      options.resume_from ? options.resume_from->file : std::filesystem::path();
  auto save_checkpoint = [&] {
    if (dp) trainer.gather_rank_states();  // collective: every rank, the same steps
    if (!saving) return;
    const std::int64_t done = trainer.steps_done();
    last_checkpoint = store.save(
        done, checkpoint_payload(trainer, loop, keys, store.folder() / CheckpointStore::file_name(done)));
  };

  SignalGuard signals(options.handle_signals);
  const auto start = Clock::now();
  auto last_live = start - std::chrono::seconds(1);
  const std::int64_t first = trainer.steps_done();
  double smoothed = 0.0, smoothing_weight = 0.0;
  // [train] max_seconds: the training time so far, this session's and earlier ones'.
  auto out_of_time = [&] {
    return tp.max_seconds > 0 && loop.elapsed + seconds_since(start) >= tp.max_seconds;
  };
  bool budget_spent = false;
  for (std::int64_t step = first; step < steps; ++step) {
    if (step == first && out_of_time()) {  // a resumed run whose budget was already spent
      budget_spent = true;
      break;
    }
    double value = 0.0;
    trainer.request_stop(g_stop_signal != 0);
    try {
      value = trainer.step().item<double>();
    } catch (const NonFiniteError& e) {
      throw Error(fmt::format(
          "{}; {}; lower train.lr, set train.grad_clip, or set train.on_nonfinite = \"skip\" to drop such "
          "batches",
          e.what(),
          last_checkpoint.empty() ? std::string("no checkpoint was written before it")
                                  : "the last good checkpoint is kept: " + last_checkpoint.string()));
    }
    if (trainer.last_step_skipped()) {
      // The first few are said; the rest only counted (the summary gives the total).
      if (log && trainer.skipped_steps() <= 10)
        log(fmt::format("train: step {}: non-finite loss or gradient; batch skipped{}", step + 1,
                        trainer.skipped_steps() == 10 ? " (further skips are only counted)" : ""));
    } else {
      loop.window_sum += value;
      ++loop.window_n;
      for (std::size_t i = 0; i < loop.stat_names.size(); ++i) {
        auto it = trainer.statistics().find(loop.stat_names[i]);
        const double v = it == trainer.statistics().end() ? 0.0 : it->second;
        loop.stat_window[i] += v;
        loop.stat_total[i] += v;
      }
      if (!loop.stat_names.empty()) ++loop.stat_steps;
      // A bias-corrected exponential average for the live line.
      smoothed = 0.95 * smoothed + 0.05 * value;
      smoothing_weight = 0.95 * smoothing_weight + 0.05;
    }
    const double elapsed = seconds_since(start);
    if ((step + 1) % log_every == 0 || step + 1 == steps) {
      if (loop.window_n > 0) {
        const double mean = loop.window_sum / static_cast<double>(loop.window_n);
        loop.losses.push_back(mean);
        loop.logged.push_back(step + 1);
        std::string row =
            fmt::format("{},{:.8g},{:.6g},{:.3f}", step + 1, mean, schedule.at(step), loop.elapsed + elapsed);
        for (double& sum : loop.stat_window) {
          row += fmt::format(",{:.6g}", sum / static_cast<double>(loop.window_n));
          sum = 0.0;
        }
        row += "\n";
        loop.csv += row;
        if (csv.is_open())
          csv << row << std::flush;  // a row is there to be watched (tail -f) while the run goes on
      }
      loop.window_sum = 0.0;
      loop.window_n = 0;
      std::fill(loop.stat_window.begin(), loop.stat_window.end(), 0.0);
    }
    const double rate = static_cast<double>(step + 1 - first) / std::max(elapsed, 1e-9);
    const std::string eta = duration_text(static_cast<double>(steps - step - 1) / rate);
    const std::string loss_text =
        smoothing_weight > 0 ? fmt::format("{:.5f}", smoothed / smoothing_weight) : "nan";
    if (options.live) {
      if (Clock::now() - last_live > std::chrono::milliseconds(200) || step + 1 == steps) {
        last_live = Clock::now();
        options.live(fmt::format("train: step {}/{}  loss {}  {:.1f} steps/s  ETA {}", step + 1, steps,
                                 loss_text, rate, eta));
      }
    } else if (log && ((step + 1) % progress_every == 0 || step + 1 == steps)) {
      log(fmt::format("step {:>6}/{}  loss {}  lr {:.2e}  {:.1f} steps/s  {:.1f}s  ETA {}", step + 1, steps,
                      loss_text, schedule.at(step), rate, loop.elapsed + elapsed, eta));
    }
    budget_spent = step + 1 < steps && out_of_time();
    const bool due =
        (checkpoint_every > 0 && (step + 1) % checkpoint_every == 0) || step + 1 == steps || budget_spent;
    // Data parallel: the ranks stop together, after the step in which any of them was signalled.
    bool hook_stop = false;
    if (options.on_step) {
      TrainProgress progress;
      progress.step = step + 1;
      progress.steps = steps;
      progress.loss = smoothing_weight > 0 ? smoothed / smoothing_weight : std::nan("");
      progress.steps_per_second = rate;
      progress.seconds = loop.elapsed + elapsed;
      hook_stop = options.on_step(progress) && step + 1 < steps && !dp;
    }
    const bool stop =
        hook_stop || (options.handle_signals && (dp ? trainer.stop_agreed() : g_stop_signal != 0));
    if (due || stop) {
      loop.elapsed += elapsed;
      const double offset = elapsed;
      save_checkpoint();
      loop.elapsed -= offset;  // elapsed keeps counting from `start`
    }
    if (stop) {
      const int signal = hook_stop ? SIGINT : g_stop_signal != 0 ? static_cast<int>(g_stop_signal) : SIGTERM;
      if (!saving)
        throw Interrupted(signal, fmt::format("rank {} stopped after step {} of {} with the other ranks",
                                              dp ? dp->world().rank : 0, step + 1, steps));
      throw Interrupted(
          signal,
          fmt::format("interrupted by {} after step {} of {}; checkpoint {}; continue with: "
                      "pathline {}resume {}",
                      signal == SIGINT ? "SIGINT" : "SIGTERM", step + 1, steps, last_checkpoint.string(),
                      dp ? fmt::format("launch --nproc-per-node {} -- ", dp->world().local_world_size)
                         : std::string(),
                      run_dir.string()));
    }
    if (budget_spent) break;
  }
  const double seconds = seconds_since(start);
  const std::int64_t done = trainer.steps_done() - first;
  result.steps = trainer.steps_done();
  if (budget_spent && log)
    log(fmt::format("train: the time budget (train.max_seconds = {}) ended training after step {} of {}",
                    tp.max_seconds, trainer.steps_done(), steps));
  result.skipped = trainer.skipped_steps();
  result.losses = loop.losses;
  result.logged = loop.logged;
  result.final_loss = loop.losses.empty() ? std::nan("") : loop.losses.back();
  for (std::size_t i = 0; i < loop.stat_names.size(); ++i)
    if (loop.stat_steps > 0)
      result.statistics[loop.stat_names[i]] = loop.stat_total[i] / static_cast<double>(loop.stat_steps);
  result.seconds = seconds;
  result.samples_per_second = done > 0 ? static_cast<double>(done * tp.batch_size) / seconds : 0.0;
  // A training step costs about three forward passes (forward, and backward's two products).
  if (double macs = c.model ? c.model->macs_per_sample() : 0.0; macs > 0)
    result.gflops = 3.0 * 2.0 * macs * result.samples_per_second / 1e9;
  if (log && dp && done > 0)
    log(
        fmt::format("train: data parallel over {} ranks, batch {} per rank; all-reduce {:.2f} ms per step "
                    "(not hidden behind the backward pass)",
                    dp->world().world_size, tp.batch_size / dp->world().world_size,
                    1e3 * dp->seconds() / static_cast<double>(done)));
  if (log && done > 0)
    log(fmt::format(
        "train: {} steps in {:.1f}s, {:.1f} samples/s{}{}{}", done, result.seconds, result.samples_per_second,
        result.gflops > 0 ? fmt::format(", {:.1f} GFLOP/s (3 x 2 x MACs per sample)", result.gflops)
                          : std::string(),
        result.skipped > 0 ? fmt::format(", {} non-finite batches skipped", result.skipped) : std::string(),
        statistics_text(result.statistics)));
  if (trainer.has_ema()) {
    torch::NoGradGuard no_grad;
    for (const auto& p : trained.parameters()) result.raw.push_back(p.detach().clone());
    result.ema = trainer.ema_weights();
    if (config.sample.use_ema) trainer.copy_sampling_weights_to_model();
  }
  trained.eval();
  return result;
}

}  // namespace pathline
