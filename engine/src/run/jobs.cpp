#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/distributed.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/engine/random.hpp"
#include "pathline/engine/run.hpp"
#include "pathline/plot/plot.hpp"

namespace pathline {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
Logger& live_slot() {
  static Logger live;
  return live;
}
}  // namespace

void set_live_progress(Logger live) { live_slot() = std::move(live); }
const Logger& live_progress() { return live_slot(); }

fs::path create_run_dir(const PipelineConfig& config, const std::optional<fs::path>& explicit_dir,
                        bool overwrite) {
  std::error_code ec;
  auto is_empty_or_missing = [&](const fs::path& p) {
    return !fs::exists(p, ec) || (fs::is_directory(p, ec) && fs::is_empty(p, ec));
  };
  fs::path dir;
  if (explicit_dir) {
    dir = *explicit_dir;
    if (!is_empty_or_missing(dir) && !overwrite)
      throw InputError(dir.string() +
                       ": the run directory exists and is not empty; pass --overwrite to replace it");
  } else {
    const RunSettings& run = config.run;
    std::string name = run.name;
    if (name.empty()) name = config.source.stem().string();
    if (name.empty()) name = "run";
    fs::path base = fs::path(run.dir) / name;
    dir = base;
    for (int i = 2; !overwrite && !is_empty_or_missing(dir); ++i)
      dir = base.string() + "-" + std::to_string(i);
  }
  if (overwrite && fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) throw InputError(dir.string() + ": exists and is not a directory");
    for (const auto& entry : fs::directory_iterator(dir)) fs::remove_all(entry.path());
  }
  fs::create_directories(dir, ec);
  if (ec) throw InputError(dir.string() + ": cannot create the run directory: " + ec.message());
  return dir;
}

namespace {

void save_module_weights(torch::nn::Module& module, const fs::path& file,
                         const std::map<std::string, std::string>& metadata) {
  write_safetensors(file, named_weights(module), metadata);
}

}  // namespace

void save_weights(Model& model, const fs::path& file, const std::map<std::string, std::string>& metadata) {
  save_module_weights(model, file, metadata);
}

void load_weights(Model& model, const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec))
    throw InputError(file.string() + ": no weights file (was the run trained to the end?)");
  if (file.extension() != ".pt") {
    load_named_weights(model, read_safetensors(file), file);
    return;
  }
  // A LibTorch archive: the weights files of runs made before Pathline 0.2.
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file.string());
    model.load(archive);
  } catch (const c10::Error& e) {
    std::string reason = e.what_without_backtrace();
    reason = reason.substr(0, reason.find('\n'));
    throw InputError(file.string() + ": corrupt or incompatible LibTorch weights archive: " + reason);
  }
}

// Which of a run's weight files sampling reads: model.safetensors holds the EMA weights when training
// kept them (its metadata says "ema"), else the raw ones; model-raw.safetensors holds the raw ones
// beside EMA ones. Runs made before Pathline 0.2 have model.pt (raw) and model-ema.pt instead.
std::string run_weights_file(const fs::path& run_dir, bool use_ema) {
  std::error_code ec;
  if (fs::exists(run_dir / "model.safetensors", ec)) {
    if (use_ema || !fs::exists(run_dir / "model-ema.pt", ec)) {
      if (!use_ema && fs::exists(run_dir / "model-raw.safetensors", ec)) return "model-raw.safetensors";
      return "model.safetensors";
    }
  }
  if (fs::exists(run_dir / "model.pt", ec))
    return use_ema && fs::exists(run_dir / "model-ema.pt", ec) ? "model-ema.pt" : "model.pt";
  return "model.safetensors";  // missing: load_weights says so
}

namespace {

// Puts `weights` (in model.parameters() order) into the model and returns what was there.
std::vector<torch::Tensor> swap_parameters(torch::nn::Module& model,
                                           const std::vector<torch::Tensor>& weights) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> params = model.parameters(), previous;
  for (std::size_t i = 0; i < params.size(); ++i) {
    previous.push_back(params[i].detach().clone());
    params[i].copy_(weights[i]);
  }
  return previous;
}

// Finite numbers as numbers, the rest as null (JSON has no NaN).
json number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

plot::Points points_of(const torch::Tensor& xy) {
  torch::Tensor flat = xy.reshape({xy.size(0), -1}).narrow(1, 0, 2).to(torch::kFloat64).contiguous();
  return plot::Points(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
}

// A class's name for pictures: the data set's own name for it, else "class k"; -1 is unconditional.
std::string class_label(const DataInfo& data, std::int64_t label) {
  if (label == kNullLabel) return "unconditional";
  if (label >= 0 && static_cast<std::size_t>(label) < data.class_names.size() &&
      !data.class_names[static_cast<std::size_t>(label)].empty())
    return data.class_names[static_cast<std::size_t>(label)];
  return fmt::format("class {}", label);
}

// A grid of images [N, C, H, W] (values in [lo, hi]), `cols` a row, drawn at least 800 pixels wide
// (each pixel a square, nearest neighbour) with its rows and columns labelled; a build without
// charts (PATHLINE_CHARTS=OFF) writes the same grid scaled up, without the labels.
void write_image_sheet(const fs::path& file, const torch::Tensor& images, std::int64_t cols, double lo,
                       double hi, std::vector<std::string> row_labels, std::vector<std::string> column_labels,
                       const std::string& title) {
  constexpr int kPad = 2, kMinWidth = 800;
  const Image grid = image_grid(images, cols, lo, hi, kPad);
  if (!plot::available()) {
    const int scale = std::max(1, (kMinWidth + grid.width - 1) / grid.width);
    Image big;
    big.width = grid.width * scale;
    big.height = grid.height * scale;
    big.channels = grid.channels;
    big.pixels.resize(static_cast<std::size_t>(big.width) * big.height * big.channels);
    for (int y = 0; y < big.height; ++y)
      for (int x = 0; x < big.width; ++x)
        for (int ch = 0; ch < big.channels; ++ch)
          big.pixels[(static_cast<std::size_t>(y) * big.width + x) * big.channels + ch] =
              grid.pixels[(static_cast<std::size_t>(y / scale) * grid.width + x / scale) * grid.channels +
                          ch];
    write_png(file, big);
    return;
  }
  plot::ImageSheet sheet;
  sheet.width = grid.width;
  sheet.height = grid.height;
  sheet.channels = grid.channels;
  sheet.pixels.assign(grid.pixels.begin(), grid.pixels.end());
  sheet.tile_width = static_cast<int>(images.size(3));
  sheet.tile_height = static_cast<int>(images.size(2));
  sheet.pad = kPad;
  sheet.row_labels = std::move(row_labels);
  sheet.column_labels = std::move(column_labels);
  sheet.title = title;
  write_file_atomic(file, plot::image_sheet(file, sheet, kMinWidth));
}

void write_pictures(const PipelineConfig& config, Components& c, const fs::path& dir, const SampleResult& s) {
  const DataInfo& data = c.data();
  if (data.is_image()) {
    // Images sorted by the class they were asked for, so that a conditional run shows one class per
    // row (10 columns: one row per class when every class was asked for equally), each row named.
    torch::Tensor images = s.samples;
    std::int64_t cols = std::min<std::int64_t>(10, images.size(0));
    std::vector<std::string> row_labels;
    if (s.labels.defined()) {
      // One row per class asked for (the first ten classes), its first ten samples; a class with
      // fewer leaves the rest of its row blank.
      torch::Tensor classes = std::get<0>(at::_unique(s.labels, /*sorted=*/true));
      std::vector<torch::Tensor> rows;
      for (std::int64_t k = 0; k < std::min<std::int64_t>(classes.size(0), 10); ++k) {
        torch::Tensor picked = torch::nonzero(s.labels == classes[k]).flatten();
        torch::Tensor row = images.index_select(0, picked.narrow(0, 0, std::min(cols, picked.size(0))));
        if (row.size(0) < cols) {
          auto blank_shape = row.sizes().vec();
          blank_shape[0] = cols - row.size(0);
          row = torch::cat({row, torch::full(blank_shape, data.min_value, row.options())});
        }
        rows.push_back(row);
        row_labels.push_back(class_label(data, classes[k].item<std::int64_t>()));
      }
      images = torch::cat(rows);
    }
    const double lo = std::isfinite(data.min_value) ? data.min_value : -1.0;
    const double hi = std::isfinite(data.max_value) ? data.max_value : 1.0;
    const std::string solver = config.component("solver").type;
    write_image_sheet(dir / "samples.png", images.narrow(0, 0, std::min<std::int64_t>(images.size(0), 100)),
                      cols, lo, hi, row_labels, {},
                      fmt::format("{} samples, {} ({} NFE)", s.samples.size(0), solver, s.nfe));
    if (s.trajectories.defined()) {
      // [steps + 1, K, C, H, W]: a row per sample, a column per time (at most 10 times).
      const std::int64_t frames = s.trajectories.size(0),
                         k = std::min<std::int64_t>(s.trajectories.size(1), 8);
      torch::Tensor picked =
          torch::linspace(0, static_cast<double>(frames - 1), std::min<std::int64_t>(frames, 10))
              .round()
              .to(torch::kInt64);
      torch::Tensor grid =
          s.trajectories.index_select(0, picked).narrow(1, 0, k).transpose(0, 1).flatten(0, 1);
      std::vector<std::string> time_labels, sample_labels;
      for (std::int64_t j = 0; j < picked.size(0); ++j) {
        const auto frame = static_cast<std::size_t>(picked[j].item<std::int64_t>());
        if (frame < s.times.size()) time_labels.push_back(fmt::format("t = {:.2f}", s.times[frame]));
      }
      if (time_labels.size() != static_cast<std::size_t>(picked.size(0))) time_labels.clear();
      if (s.labels.defined())
        for (std::int64_t i = 0; i < k; ++i)
          sample_labels.push_back(class_label(data, s.labels[i].item<std::int64_t>()));
      write_image_sheet(dir / "trajectories.png", grid, picked.size(0), lo, hi, sample_labels, time_labels,
                        "from the source (left) to samples (right)");
    }
    return;
  }
  // 2D data (the first two coordinates of anything flat), drawn as charts unless this build has none.
  if (data.shape.size() != 1 || data.shape[0] < 2 || !plot::available()) return;
  at::Generator gen = make_generator(config.run.seed, Stream::plot);
  torch::Tensor reference = plugin_call(c.origin("dataset"), "drawing the reference", [&] {
                              return c.dataset->sample(std::min<std::int64_t>(s.samples.size(0), 20000), gen);
                            }).x;
  write_file_atomic(dir / "samples.png",
                    plot::scatter(dir / "samples.png", points_of(reference), points_of(s.samples),
                                  fmt::format("{} samples, {} ({} NFE)", s.samples.size(0),
                                              config.component("solver").type, s.nfe)));
  if (s.trajectories.defined()) {
    std::vector<plot::Points> states;
    for (std::int64_t i = 0; i < s.trajectories.size(0); ++i) states.push_back(points_of(s.trajectories[i]));
    write_file_atomic(dir / "trajectories.png",
                      plot::pathlines(dir / "trajectories.png", states, points_of(reference),
                                      "pathlines from the source (t = 0) to the data (t = 1)"));
  }
}

void write_loss_curve(const fs::path& dir, const TrainResult& trained) {
  if (trained.losses.empty() || !plot::available()) return;
  plot::Series series;
  series.label = "training loss";
  series.markers = trained.losses.size() <= 50;
  for (std::size_t i = 0; i < trained.losses.size(); ++i) {
    series.x.push_back(static_cast<double>(trained.logged[i]));
    series.y.push_back(trained.losses[i]);
  }
  plot::Axes axes;
  axes.title = "training loss";
  axes.x_label = "step";
  axes.y_label = "loss (mean over the logging window)";
  axes.log_y = true;
  write_file_atomic(dir / "loss.png", plot::line_chart(dir / "loss.png", axes, {series}));
}

// "model: mlp, 198,402 parameters, 0.20 M multiply-accumulates per sample"
std::string describe_model(const PipelineConfig& config, const Components& c) {
  std::int64_t count = 0;
  if (!c.model) {
    for (const auto& p : c.autoencoder->parameters()) count += p.numel();
    return fmt::format("autoencoder: {}, {} parameters (trained on the data; no flow)",
                       config.component("autoencoder").type, count);
  }
  for (const auto& p : c.model->parameters()) count += p.numel();
  std::string text = fmt::format("model: {}, {} parameters", config.component("model").type, count);
  if (double macs = c.model->macs_per_sample(); macs > 0)
    text += fmt::format(", {:.3g} M multiply-accumulates per sample", macs / 1e6);
  return text;
}

// Where the run computed: {"device": "cpu" | "cuda:0", "torch": "2.15.0", "threads": 2}.
json platform_json(const Components& c) {
  return {{"device", c.context.device.str()}, {"torch", TORCH_VERSION}, {"threads", at::get_num_threads()}};
}

// "device: cpu, 2 threads, LibTorch 2.15.0"
std::string describe_platform(const Components& c) {
  return fmt::format("device: {}, {} thread{}, LibTorch {}", c.context.device.str(), at::get_num_threads(),
                     at::get_num_threads() == 1 ? "" : "s", TORCH_VERSION);
}

json train_json(const TrainResult& trained) {
  json j = {{"steps", trained.steps},
            {"resumed_from", trained.resumed_from},
            {"skipped_batches", trained.skipped},
            {"final_loss", number(trained.final_loss)},
            {"seconds", number(trained.seconds)},
            {"samples_per_second", number(trained.samples_per_second)}};
  if (trained.gflops > 0) j["gflops"] = number(trained.gflops);
  if (const std::int64_t done = trained.steps - trained.resumed_from; done > 0 && trained.seconds > 0)
    j["seconds_per_step"] = number(trained.seconds / static_cast<double>(done));
  // The objective's statistics (cnf_mle: "nfe"), means per step.
  if (!trained.statistics.empty()) {
    json statistics = json::object();
    for (const auto& [name, value] : trained.statistics) statistics[name] = number(value);
    j["objective"] = statistics;
  }
  return j;
}

// Logs each metric's line and returns {"metrics": name -> value, "metric_details": name -> ...}.
json metrics_json(const std::vector<MetricRecord>& metrics, const Logger& log) {
  json values = json::object(), details = json::object();
  for (const auto& m : metrics) {
    if (log) {
      // A metric that reports a floor (the same score between two draws of real data) gets it
      // printed beside the value, with the ratio, since the value alone means little.
      std::string floor;
      const auto& d = m.result.details;
      if (auto it = d.find("floor"); it != d.end()) {
        floor = fmt::format("; floor {:.6f}", it->second);
        if (auto r = d.find("ratio"); r != d.end()) floor += fmt::format(", {:.2f}x the floor", r->second);
      }
      // A metric that used fewer samples than it was given (max_points, nll's n) says so in
      // details["n"]; one that knows its own spread reports details["standard_error"].
      std::string used, spread;
      if (auto it = d.find("n");
          it != d.end() && it->second < static_cast<double>(std::max(m.generated_n, m.reference_n)))
        used = fmt::format("; the metric used n = {}", static_cast<std::int64_t>(it->second));
      if (auto it = d.find("standard_error"); it != d.end()) spread = fmt::format(" +- {:.6f}", it->second);
      log(fmt::format("eval: {} = {:.6f}{} ({}; {} generated vs {} reference samples{}{})", m.name,
                      m.result.value, spread, to_string(m.direction), m.generated_n, m.reference_n, used,
                      floor));
    }
    values[m.name] = number(m.result.value);
    json extra = json::object();
    for (const auto& [key, value] : m.result.details) extra[key] = number(value);
    details[m.name] = {{"type", m.type},
                       {"quantity", m.result.quantity.empty() ? m.type : m.result.quantity},
                       {"value", number(m.result.value)},
                       {"direction", m.direction == Direction::lower_is_better ? "lower" : "higher"},
                       {"generated_samples", m.generated_n},
                       {"reference_samples", m.reference_n},
                       {"details", extra}};
  }
  return {{"metrics", values}, {"metric_details", details}};
}

// Samples with the config's solver, logs how, and describes it for summary.json / eval.json.
SampleResult sample_logged(const PipelineConfig& config, Components& c, const Logger& log, json& sampling,
                           const torch::Tensor& noise = {}) {
  // Progress for runs of several batches: the live line, or a plain line at most every 10 seconds.
  double last_plain = 0.0;
  SampleProgress progress = [&](std::int64_t done, std::int64_t total, double seconds) {
    if (done >= total && seconds < 10.0) return;
    const double eta = seconds / static_cast<double>(done) * static_cast<double>(total - done);
    const std::string text =
        fmt::format("sample: {}/{} samples  {:.1f}s  ETA {:.0f}s", done, total, seconds, eta);
    if (const Logger& live = live_progress()) {
      live(text);
    } else if (log && done < total && seconds - last_plain >= 10.0) {
      last_plain = seconds;
      log(text);
    }
  };
  const std::int64_t n = noise.defined() ? noise.size(0) : config.sample.n;
  const bool batches = n > config.sample.batch_size;
  SampleResult s = sample(config, c, batches ? progress : SampleProgress(), noise);
  if (log)
    log(fmt::format("sample: {} samples, solver {} {} from t = {} to {}{} ({} NFE) in {:.2f}s",
                    s.samples.size(0), config.component("solver").type,
                    c.solver->grid_steps() > 0 ? "on the " + config.component("time_grid").type + " grid"
                                               : std::string("with its own steps"),
                    s.interval.t_start, s.interval.t_end,
                    s.interval.denoise ? " and a final denoising step" : "", s.nfe, s.seconds));
  if (log && !s.solver_statistics.empty()) {
    std::string stats;
    for (const auto& [key, value] : s.solver_statistics)
      stats += fmt::format("{}{} = {}", stats.empty() ? "" : ", ", key, value);
    log("sample: solver " + stats);
  }
  sampling = {{"solver", config.component("solver").type},
              {"time_grid", config.component("time_grid").type},
              {"n", s.samples.size(0)},
              {"t_start", number(s.interval.t_start)},
              {"t_end", number(s.interval.t_end)},
              {"final_denoise", s.interval.denoise},
              {"nfe", s.nfe},
              {"solver_statistics", s.solver_statistics},
              {"guidance_scale", config.sample.guidance_scale},
              {"seconds", number(s.seconds)}};
  return s;
}

void write_outputs(const PipelineConfig& config, Components& c, const fs::path& dir,
                   const TrainResult* trained, const Logger& log, const torch::Tensor& noise = {}) {
  json sampling;
  SampleResult s = sample_logged(config, c, log, sampling, noise);
  write_npy(dir / "samples.npy", s.samples);
  if (s.labels.defined()) write_npy(dir / "labels.npy", s.labels);
  json summary = metrics_json(evaluate(config, c, s.samples, s.labels), log);
  if (trained) summary["train"] = train_json(*trained);
  summary["sampling"] = sampling;
  summary["platform"] = platform_json(c);
  write_pictures(config, c, dir, s);
  write_file_atomic(dir / "summary.json", summary.dump(2) + "\n");
}

}  // namespace

LoadedRun open_run(const fs::path& run_dir, const Registry& registry,
                   const std::vector<std::string>& overrides, const std::optional<fs::path>& weights_file) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) throw InputError(run_dir.string() + ": no such run directory");
  ConfigOptions options;
  options.overrides = overrides;
  PipelineConfig config = load_config(run_dir / "config.toml", registry, options);
  if (config.trains_autoencoder())
    throw InputError(
        run_dir.string() +
        ": an autoencoder run (its pipeline has no [model]): it has no flow to sample or evaluate; "
        "its reconstructions' metrics are in summary.json, and a flow pipeline uses it with "
        "[autoencoder] run = \"" +
        run_dir.string() + "\"");
  apply_thread_setting(config);
  Components c = build_components(config, registry);
  std::string weights;
  if (weights_file) {
    // A weights file given explicitly: safetensors (any run's, or another tool's with the model's
    // names), or a LibTorch archive of an older run (model.pt, model-ema.pt).
    load_weights(*c.model, *weights_file);
    weights = weights_file->string();
  } else if (c.model->trainable()) {
    weights = run_weights_file(run_dir, config.sample.use_ema);
    load_weights(*c.model, run_dir / weights);
  }
  return {std::move(config), std::move(c), weights};
}

namespace {

// A trained flow run's sampler over given source points (reflow's teacher).
class RunFlow final : public TrainedFlow {
 public:
  RunFlow(LoadedRun run, fs::path weights) : run_(std::move(run)), weights_(std::move(weights)) {
    run_.config.sample.trajectories = 0;
  }
  DataInfo flow() const override { return run_.components.flow(); }
  torch::Tensor transport(const torch::Tensor& x0, const torch::Tensor& labels) override {
    SampleResult r = sample(run_.config, run_.components, {}, x0, labels);
    evaluations_ = r.nfe;
    // Out of inference mode: the pairs enter training graphs.
    return r.samples.to(x0.device()).clone();
  }
  std::int64_t evaluations() const override { return evaluations_; }
  std::string weights_file() const override { return weights_.string(); }

 private:
  LoadedRun run_;
  fs::path weights_;
  std::int64_t evaluations_ = 0;
};

}  // namespace

std::shared_ptr<TrainedFlow> open_trained_flow(const fs::path& run_dir, const Registry& registry) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) throw InputError(run_dir.string() + ": no such run directory");
  if (!fs::is_regular_file(run_dir / "config.toml", ec))
    throw InputError(run_dir.string() + ": not a run directory (it has no config.toml)");
  LoadedRun run;
  try {
    run = open_run(run_dir, registry, {});
  } catch (const InputError& e) {
    std::string why = e.what();
    why = why.substr(0, why.find('\n'));
    throw InputError(why.rfind(run_dir.string(), 0) == 0 ? why : run_dir.string() + ": " + why);
  }
  if (run.components.latent)
    throw InputError(run_dir.string() +
                     ": its flow runs in an autoencoder's latent space; a teacher must run on the data");
  if (!run.components.model->trainable() || run.weights.empty())
    throw InputError(run_dir.string() + ": its model has no trained weights");
  const fs::path weights = run_dir / run.weights;
  if (weights.extension() != ".safetensors")
    throw InputError(run_dir.string() + ": its weights are in " + run.weights +
                     ", an archive of an older Pathline; a teacher's must be .safetensors");
  return std::make_shared<RunFlow>(std::move(run), weights);
}

namespace {

void log_weights(const Logger& log, const std::string& weights, const fs::path& run_dir) {
  if (!log || weights.empty()) return;
  std::error_code ec;
  // model.safetensors holds the EMA weights exactly when the raw ones were written beside them.
  const bool ema = weights == "model-ema.pt" ||
                   (weights == "model.safetensors" && fs::exists(run_dir / "model-raw.safetensors", ec));
  const bool raw =
      weights == "model-raw.safetensors" || weights == "model.pt" || weights == "model.safetensors";
  log(ema   ? "weights: the EMA weights (" + weights + ")"
      : raw ? "weights: the raw weights (" + weights + ")"
            : "weights: " + weights);
}

// `apply` on the rows of a data batch in chunks of [sample] batch_size (each chunk and its labels on
// the run's device, inference mode), the results concatenated on the CPU as float.
torch::Tensor by_chunks(const PipelineConfig& config, const Components& c, const Batch& batch,
                        const std::function<torch::Tensor(const torch::Tensor&, const Condition&)>& apply,
                        torch::ScalarType dtype) {
  c10::InferenceMode inference;
  const std::int64_t n = batch.x.size(0);
  const std::int64_t chunk = std::max<std::int64_t>(1, config.sample.batch_size);
  std::vector<torch::Tensor> parts;
  for (std::int64_t done = 0; done < n; done += chunk) {
    const std::int64_t size = std::min(chunk, n - done);
    Condition condition;
    if (batch.labels.defined()) condition.labels = batch.labels.narrow(0, done, size).to(c.context.device);
    parts.push_back(
        apply(batch.x.narrow(0, done, size).to(c.context.device), condition).to(torch::kCPU, dtype));
  }
  return torch::cat(parts);
}

// The scale that gives the encoded data unit variance: 1 / the standard deviation of the posterior
// means of `n` data samples (one draw from its own stream, so that it never depends on training).
double measure_latent_scale(const PipelineConfig& config, Components& c, std::int64_t n) {
  at::Generator gen = make_generator(config.run.seed, Stream::eval);
  Batch batch =
      plugin_call(c.origin("dataset"), "drawing a batch", [&] { return c.dataset->sample(n, gen); });
  const torch::Tensor means = by_chunks(
      config, c, batch,
      [&](const torch::Tensor& x, const Condition& condition) {
        return plugin_call(c.origin("autoencoder"), "encode",
                           [&] { return c.autoencoder->encode(x, condition).mean; });
      },
      torch::kFloat64);
  const double std = means.std().item<double>();
  if (!std::isfinite(std) || std <= 0.0)
    throw Error(
        fmt::format("the autoencoder's latents of {} data samples have standard deviation {}: no latent "
                    "scale can be measured",
                    n, std));
  return 1.0 / std;
}

// An autoencoder run's end: its weights (autoencoder.safetensors: EMA when kept, with the raw ones
// beside), the latent scale (in the weights' metadata), the loss curve, and reconstructions of
// [sample] n fresh data samples: reconstructions.npy, reconstructions.png (originals above, their
// reconstructions below), the [[metric]] scores of the reconstructions, summary.json last.
void finish_autoencoder_run(const PipelineConfig& config, Components& c, const fs::path& dir,
                            const TrainResult& trained, const Logger& log) {
  Autoencoder& ae = *c.autoencoder;
  ae.eval();
  const double scale = measure_latent_scale(config, c, std::max<std::int64_t>(config.sample.n, 1000));
  const DataInfo latent = plugin_call(c.origin("autoencoder"), "latent", [&] { return ae.latent(c.data()); });
  std::map<std::string, std::string> metadata = {
      {"pathline.autoencoder", config.component("autoencoder").type},
      {"pathline.weights", trained.ema.empty() ? "raw" : "ema"},
      {"pathline.data_shape", shape_text(c.data().shape)},
      {"pathline.latent_shape", shape_text(latent.shape)},
      {"pathline.latent_scale", fmt::format("{:.17g}", scale)}};
  if (!trained.ema.empty()) {
    std::vector<torch::Tensor> in_use = swap_parameters(ae, trained.raw);
    metadata["pathline.weights"] = "raw";
    save_module_weights(ae, dir / "autoencoder-raw.safetensors", metadata);
    swap_parameters(ae, in_use);
    metadata["pathline.weights"] = "ema";
  }
  write_loss_curve(dir, trained);
  if (log)
    log(fmt::format("autoencoder: latent shape {} ({:.1f}x fewer numbers than the data), latent scale {:.4g}",
                    shape_text(latent.shape),
                    static_cast<double>(c.data().numel()) / static_cast<double>(latent.numel()), scale));

  // Reconstructions of fresh data.
  at::Generator gen = make_generator(config.run.seed, Stream::sample);
  const std::int64_t n = config.sample.n;
  Batch data = plugin_call(c.origin("dataset"), "drawing a batch", [&] { return c.dataset->sample(n, gen); });
  torch::Tensor recon = by_chunks(
      config, c, data,
      [&](const torch::Tensor& x, const Condition& condition) {
        return plugin_call(c.origin("autoencoder"), "reconstructing",
                           [&] { return ae.decode(ae.encode(x, condition).mean, condition); });
      },
      torch::kFloat32);
  torch::Tensor originals = data.x.to(torch::kFloat32);
  if (recon.sizes() != originals.sizes())
    throw Error(fmt::format("[autoencoder] (type '{}'): decode(encode(x)) is shaped {}, the data {}",
                            config.component("autoencoder").type, shape_text(recon.sizes().vec()),
                            shape_text(originals.sizes().vec())));
  const DataInfo& info = c.data();
  if (std::isfinite(info.min_value) && std::isfinite(info.max_value))
    recon = recon.clamp(info.min_value, info.max_value);
  const double mse = (recon - originals).square().mean().item<double>();
  write_npy(dir / "reconstructions.npy", recon);
  if (data.labels.defined()) write_npy(dir / "labels.npy", data.labels.to(torch::kInt64));
  if (log) log(fmt::format("reconstruct: {} fresh data samples, mean squared error {:.5f}", n, mse));
  json summary = metrics_json(evaluate(config, c, recon, data.labels), log);
  summary["train"] = train_json(trained);
  summary["autoencoder"] = {{"type", config.component("autoencoder").type},
                            {"data_shape", c.data().shape},
                            {"latent_shape", latent.shape},
                            {"latent_scale", number(scale)},
                            {"reconstruction_mse", number(mse)},
                            {"reconstructed", n}};
  summary["platform"] = platform_json(c);
  if (info.is_image()) {
    // Rows of ten: originals above, their reconstructions below, three such pairs.
    const std::int64_t cols = std::min<std::int64_t>(10, n);
    std::vector<torch::Tensor> rows;
    std::vector<std::string> labels;
    for (std::int64_t r = 0; r < 3 && (r + 1) * cols <= n; ++r) {
      rows.push_back(originals.narrow(0, r * cols, cols));
      rows.push_back(recon.narrow(0, r * cols, cols));
      labels.push_back("data");
      labels.push_back("reconstructed");
    }
    if (!rows.empty()) {
      const double lo = std::isfinite(info.min_value) ? info.min_value : -1.0;
      const double hi = std::isfinite(info.max_value) ? info.max_value : 1.0;
      write_image_sheet(dir / "reconstructions.png", torch::cat(rows), cols, lo, hi, labels, {},
                        fmt::format("{} reconstructions (latent {})", config.component("autoencoder").type,
                                    shape_text(latent.shape)));
    }
  }
  // The weights last but one, summary.json last: a flow can use the run once both are there.
  save_module_weights(ae, dir / kAutoencoderWeights, metadata);
  write_file_atomic(dir / "summary.json", summary.dump(2) + "\n");
}

// After training: the weights (raw, and EMA beside them), the loss curve, and for `run` the
// samples, metrics, pictures and summary.json (always written last: its presence means done).
void finish_run(const PipelineConfig& config, Components& c, const fs::path& dir, const TrainResult& trained,
                bool do_sample, const Logger& log) {
  if (!c.model) return finish_autoencoder_run(config, c, dir, trained, log);
  // model.safetensors: the EMA weights when kept, else the raw ones (the weights sampling uses by
  // default); with EMA, model-raw.safetensors beside it. Tensors under the module tree's names.
  std::map<std::string, std::string> metadata = {{"pathline.model", config.component("model").type},
                                                 {"pathline.weights", trained.ema.empty() ? "raw" : "ema"}};
  if (trained.ema.empty()) {
    if (c.model->trainable()) save_weights(*c.model, dir / "model.safetensors", metadata);
  } else {
    // The model keeps the weights sampling uses.
    std::vector<torch::Tensor> in_use = swap_parameters(*c.model, trained.ema);
    save_weights(*c.model, dir / "model.safetensors", metadata);
    swap_parameters(*c.model, trained.raw);
    metadata["pathline.weights"] = "raw";
    save_weights(*c.model, dir / "model-raw.safetensors", metadata);
    swap_parameters(*c.model, in_use);
  }
  write_loss_curve(dir, trained);
  if (do_sample) {
    write_outputs(config, c, dir, &trained, log);
  } else {
    write_file_atomic(dir / "summary.json",
                      json{{"train", train_json(trained)}, {"platform", platform_json(c)}}.dump(2) + "\n");
  }
}

}  // namespace

namespace {

// Data parallel, when the environment says this process is one rank of several (torchrun's
// variables, or `pathline launch`): the group, formed within [run] timeout.
std::unique_ptr<DataParallel> join_ranks(const PipelineConfig& config, const Logger& log) {
  const WorldInfo world = world_from_environment();
  if (!world.distributed()) return nullptr;
  const auto timeout = std::chrono::milliseconds(static_cast<std::int64_t>(1000.0 * config.run.timeout));
  auto group = std::make_unique<DataParallel>(world, timeout, run_device(config));
  if (log && world.rank == 0)
    log(fmt::format("data parallel: {} ranks ({} on this machine) through {}:{}", world.world_size,
                    world.local_world_size, world.master_addr, world.master_port));
  return group;
}

}  // namespace

namespace {

// The one core of `run`, `train` and `resume`: every rank but 0 trains its share and leaves the
// files, the sampling and the metrics to rank 0; rank 0 gets its run directory from `make_dir`,
// says what runs where, writes the resolved config, trains (from `checkpoint` when resuming) and
// finishes the run directory.
fs::path train_run(const PipelineConfig& config, Components& c, DataParallel* group,
                   const std::function<fs::path()>& make_dir, const Checkpoint* checkpoint, bool do_sample,
                   bool handle_signals, const StepHook& on_step, const Logger& log) {
  TrainOptions options;
  options.resume_from = checkpoint;
  options.handle_signals = handle_signals;
  options.on_step = on_step;
  options.data_parallel = group;
  if (group && group->world().rank != 0) {
    train(config, c, {}, Logger(), options);
    return {};
  }
  const fs::path dir = make_dir();
  if (log) {
    log("run directory: " + dir.string());
    log(describe_model(config, c));
    log(describe_platform(c));
  }
  write_file_atomic(dir / "config.toml", config.to_toml());
  options.live = live_progress();
  TrainResult trained = train(config, c, dir, log, options);
  finish_run(config, c, dir, trained, do_sample, log);
  return dir;
}

}  // namespace

fs::path run_job(const PipelineConfig& config, const Registry& registry, const JobOptions& options,
                 const Logger& log) {
  apply_thread_setting(config);
  std::unique_ptr<DataParallel> group = join_ranks(config, log);
  Components c = build_components(config, registry);
  if (log && (!group || group->world().rank == 0))
    for (const auto& note : c.notes) log("note: " + note);
  auto make_dir = [&] {
    fs::path dir = create_run_dir(config, options.run_dir, options.overwrite);
    write_file_atomic(dir / "job.json",
                      json{{"command", options.do_sample ? "run" : "train"}}.dump(2) + "\n");
    return dir;
  };
  return train_run(config, c, group.get(), make_dir, nullptr, options.do_sample, options.handle_signals,
                   options.on_step, log);
}

fs::path resume_job(const fs::path& run_dir, const Registry& registry, const ResumeOptions& options,
                    const Logger& log) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) throw InputError(run_dir.string() + ": no such run directory");
  ConfigOptions config_options;
  config_options.overrides = options.overrides;
  PipelineConfig config = load_config(run_dir / "config.toml", registry, config_options);
  const TrainSettings& tp = config.train;
  apply_thread_setting(config);
  std::unique_ptr<DataParallel> group = join_ranks(config, log);
  const bool rank_zero = !group || group->world().rank == 0;
  // Data parallel: rank 0 checks the checkpoints (and renames corrupt ones) first; the others then
  // read the one it chose, from the same folder.
  CheckpointStore store(run_dir, tp.keep_checkpoints);
  if (rank_zero) store.remove_temporaries();
  std::optional<Checkpoint> checkpoint;
  if (rank_zero) checkpoint = store.latest_good(log);
  if (group) group->barrier();
  if (!rank_zero) checkpoint = store.latest_good(Logger());
  if (checkpoint && rank_zero) {
    std::vector<std::string> changed =
        changed_keys(checkpoint_training_keys(*checkpoint), training_keys(config));
    if (!changed.empty()) {
      std::string list;
      for (const auto& key : changed) list += (list.empty() ? "" : ", ") + key;
      throw InputError(
          fmt::format("{}: cannot resume: training-relevant keys differ from checkpoint {}: {}; only "
                      "sampling, evaluation "
                      "and logging keys may change (start a new run to train differently)",
                      run_dir.string(), checkpoint->file.filename().string(), list));
    }
  } else if (log && rank_zero) {
    log(fmt::format("resume: no checkpoint in {}; training from step 0", store.folder().string()));
  }
  // The command the run was started with decides how it ends.
  bool do_sample = true;
  if (fs::exists(run_dir / "job.json", ec)) {
    try {
      do_sample = json::parse(read_file(run_dir / "job.json")).value("command", "run") != "train";
    } catch (const json::exception& e) {
      throw InputError((run_dir / "job.json").string() + ": not valid JSON: " + e.what());
    }
  }
  if (checkpoint && checkpoint->step >= tp.steps && fs::exists(run_dir / "summary.json", ec)) {
    if (log && rank_zero)
      log(fmt::format("resume: {} is complete ({} steps trained); nothing to do", run_dir.string(),
                      checkpoint->step));
    return rank_zero ? run_dir : fs::path();
  }
  Components c = build_components(config, registry);
  return train_run(
      config, c, group.get(), [&] { return run_dir; }, checkpoint ? &*checkpoint : nullptr, do_sample,
      options.handle_signals, options.on_step, log);
}

fs::path sample_job(const fs::path& run_dir, const Registry& registry,
                    const std::vector<std::string>& overrides, const std::optional<fs::path>& out_dir,
                    const Logger& log, const std::optional<fs::path>& weights,
                    const std::optional<fs::path>& noise_file) {
  // The noise file first: a mistyped name is reported before the weights are loaded.
  torch::Tensor noise;
  if (noise_file) {
    try {
      noise = read_npy(*noise_file);  // its messages start with the file
    } catch (const InputError& e) {
      throw ArgumentFileError(e.what());
    }
  }
  LoadedRun run = open_run(run_dir, registry, overrides, weights);
  if (log)
    for (const auto& note : run.components.notes) log("note: " + note);
  if (noise_file) {
    try {
      check_noise(noise, run.components.flow());
    } catch (const InputError& e) {
      throw ArgumentFileError(noise_file->string() + ": " + e.what());
    }
  }
  std::error_code ec;
  fs::path dir;
  if (out_dir) {
    dir = *out_dir;
    if (fs::exists(dir, ec) && !(fs::is_directory(dir, ec) && fs::is_empty(dir, ec)))
      throw InputError(dir.string() + ": the output directory exists and is not empty");
  } else {
    fs::path base = run_dir / ("sample-" + run.config.component("solver").type);
    dir = base;
    for (int i = 2; fs::exists(dir, ec); ++i) dir = base.string() + "-" + std::to_string(i);
  }
  fs::create_directories(dir, ec);
  if (ec) throw InputError(dir.string() + ": cannot create: " + ec.message());
  if (log) log("sample directory: " + dir.string());
  log_weights(log, run.weights, run_dir);
  write_file_atomic(dir / "config.toml", run.config.to_toml());
  if (noise.defined() && log)
    log(fmt::format("sample: starting from the {} source points of {}", noise.size(0), noise_file->string()));
  write_outputs(run.config, run.components, dir, nullptr, log, noise);
  return dir;
}

fs::path eval_job(const fs::path& run_dir, const Registry& registry, const EvalOptions& options,
                  const Logger& log) {
  std::vector<std::string> overrides = options.overrides;
  if (options.nll) {
    // One more [[metric]] entry of type nll, after the configured ones (unless one is there).
    ConfigOptions probe;
    probe.overrides = overrides;
    probe.check_device = false;
    const PipelineConfig config = load_config(run_dir / "config.toml", registry, probe);
    bool has_nll = false;
    for (const auto& m : config.metrics()) has_nll = has_nll || m.type == "nll";
    if (!has_nll) overrides.push_back(fmt::format("metric[{}].type=nll", config.metrics().size()));
  }
  LoadedRun run = open_run(run_dir, registry, overrides);
  if (log)
    for (const auto& note : run.components.notes) log("note: " + note);
  const PipelineConfig& config = run.config;
  Components& c = run.components;
  if (c.metrics.empty())
    throw InputError(run_dir.string() +
                     ": the run's config has no [[metric]] to compute; add one with --set "
                     "metric[0].type=... (or --nll)");

  std::error_code ec;
  const fs::path samples_file = run_dir / "samples.npy", labels_file = run_dir / "labels.npy";
  // Overrides of how sampling is done mean new samples: the run's were drawn another way.
  bool sampling_changed = false;
  for (const auto& text : options.overrides)
    for (const char* table : {"sample.", "solver.", "time_grid."})
      sampling_changed = sampling_changed || text.rfind(table, 0) == 0;
  const bool fresh = options.fresh || sampling_changed || !fs::exists(samples_file, ec);
  json result;
  torch::Tensor samples, labels;
  if (fresh) {
    log_weights(log, run.weights, run_dir);
    json sampling;
    SampleResult s = sample_logged(config, c, log, sampling);
    samples = s.samples;
    labels = s.labels;
    result["samples"] = "fresh";
    result["sampling"] = sampling;
  } else {
    samples = read_npy(samples_file);
    if (fs::exists(labels_file, ec)) labels = read_npy(labels_file);
    std::vector<std::int64_t> expected = c.data().shape;
    expected.insert(expected.begin(), samples.size(0));
    if (samples.sizes().vec() != expected)
      throw InputError(fmt::format("{}: samples shaped {}, but the run's data gives {}",
                                   samples_file.string(), shape_text(samples.sizes().vec()),
                                   shape_text(expected)));
    if (labels.defined() && (labels.dim() != 1 || labels.size(0) != samples.size(0)))
      throw InputError(fmt::format("{}: {} labels for {} samples", labels_file.string(),
                                   labels.dim() == 1 ? labels.size(0) : -1, samples.size(0)));
    log_weights(log, run.weights, run_dir);
    if (log) log(fmt::format("eval: the run's {} samples (samples.npy)", samples.size(0)));
    result["samples"] = "samples.npy";
  }
  json metrics = metrics_json(evaluate(config, c, samples.to(torch::kFloat32), labels), log);
  result["metrics"] = metrics["metrics"];
  result["metric_details"] = metrics["metric_details"];
  if (!run.weights.empty()) result["weights"] = run.weights;
  result["platform"] = platform_json(c);
  const fs::path out = options.out ? *options.out : run_dir / "eval.json";
  write_file_atomic(out, result.dump(2) + "\n");
  return out;
}

}  // namespace pathline
