#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "pathline/engine/io.hpp"
#include "pathline/engine/random.hpp"
#include "pathline/engine/run.hpp"
#include "pathline/plot/plot.hpp"

namespace pathline {

namespace fs = std::filesystem;
using nlohmann::json;

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
    const Params& run = config.table("run");
    std::string name = run.string("name");
    if (name.empty()) name = config.source.stem().string();
    if (name.empty()) name = "run";
    fs::path base = fs::path(run.string("dir")) / name;
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

void save_weights(Model& model, const fs::path& file) {
  torch::serialize::OutputArchive archive;
  model.save(archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_file_atomic(file, bytes.str());
}

void load_weights(Model& model, const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec))
    throw InputError(file.string() + ": no weights file (was the run trained to the end?)");
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file.string());
    model.load(archive);
  } catch (const c10::Error& e) {
    std::string reason = e.what_without_backtrace();
    reason = reason.substr(0, reason.find('\n'));
    throw InputError(file.string() + ": corrupt or incompatible checkpoint: " + reason);
  }
}

namespace {

// Puts `weights` (in model.parameters() order) into the model and returns what was there.
std::vector<torch::Tensor> swap_parameters(Model& model, const std::vector<torch::Tensor>& weights) {
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

void write_pictures(const PipelineConfig& config, Components& c, const fs::path& dir, const SampleResult& s) {
  const DataInfo& data = c.data();
  if (data.is_image()) {
    // Images sorted by the class they were asked for, so that a conditional run shows one class per
    // row (10 columns: one row per class when every class was asked for equally).
    torch::Tensor images = s.samples;
    std::int64_t cols = std::min<std::int64_t>(10, images.size(0));
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
      }
      images = torch::cat(rows);
    }
    const double lo = std::isfinite(data.min_value) ? data.min_value : -1.0;
    const double hi = std::isfinite(data.max_value) ? data.max_value : 1.0;
    write_png(dir / "samples.png",
              image_grid(images.narrow(0, 0, std::min<std::int64_t>(images.size(0), 100)), cols, lo, hi));
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
      write_png(dir / "trajectories.png", image_grid(grid, picked.size(0), lo, hi));
    }
    return;
  }
  if (data.shape.size() != 1 || data.shape[0] < 2) return;
  // 2D data (the first two coordinates of anything flat).
  at::Generator gen =
      make_generator(static_cast<std::uint64_t>(config.table("run").integer("seed")), Stream::plot);
  torch::Tensor reference = c.dataset->sample(std::min<std::int64_t>(s.samples.size(0), 20000), gen).x;
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
  if (trained.losses.empty()) return;
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
  for (const auto& p : c.model->parameters()) count += p.numel();
  std::string text = fmt::format("model: {}, {} parameters", config.component("model").type, count);
  if (double macs = c.model->macs_per_sample(); macs > 0)
    text += fmt::format(", {:.3g} M multiply-accumulates per sample", macs / 1e6);
  return text;
}

json train_json(const TrainResult& trained) {
  json j = {{"steps", trained.steps},
            {"final_loss", number(trained.final_loss)},
            {"seconds", number(trained.seconds)},
            {"samples_per_second", number(trained.samples_per_second)}};
  if (trained.gflops > 0) j["gflops"] = number(trained.gflops);
  return j;
}

void write_outputs(const PipelineConfig& config, Components& c, const fs::path& dir,
                   const TrainResult* trained, const Logger& log) {
  SampleResult s = sample(config, c);
  if (log)
    log(fmt::format("sample: {} samples, solver {} on the {} grid ({} NFE) in {:.2f}s", s.samples.size(0),
                    config.component("solver").type, config.component("time_grid").type, s.nfe, s.seconds));
  write_npy(dir / "samples.npy", s.samples);
  if (s.labels.defined()) write_npy(dir / "labels.npy", s.labels);
  std::vector<MetricRecord> metrics = evaluate(config, c, s.samples, s.labels);

  json summary;
  if (trained) summary["train"] = train_json(*trained);
  json values = json::object(), details = json::object();
  for (const auto& m : metrics) {
    if (log)
      log(fmt::format("eval: {} = {:.6f} ({}; {} generated vs {} reference samples)", m.name, m.result.value,
                      to_string(m.direction), m.generated_n, m.reference_n));
    values[m.name] = number(m.result.value);
    json extra = json::object();
    for (const auto& [key, value] : m.result.details) extra[key] = number(value);
    details[m.name] = {{"type", m.type},
                       {"value", number(m.result.value)},
                       {"direction", m.direction == Direction::lower_is_better ? "lower" : "higher"},
                       {"generated_samples", m.generated_n},
                       {"reference_samples", m.reference_n},
                       {"details", extra}};
  }
  summary["metrics"] = values;
  summary["metric_details"] = details;
  summary["sampling"] = {{"solver", config.component("solver").type},
                         {"time_grid", config.component("time_grid").type},
                         {"n", s.samples.size(0)},
                         {"nfe", s.nfe},
                         {"guidance_scale", config.table("sample").real("guidance_scale")},
                         {"seconds", number(s.seconds)}};
  write_pictures(config, c, dir, s);
  write_file_atomic(dir / "summary.json", summary.dump(2) + "\n");
}

}  // namespace

fs::path run_job(const PipelineConfig& config, const Registry& registry, const JobOptions& options,
                 const Logger& log) {
  apply_thread_setting(config);
  Components c = build_components(config, registry);
  fs::path dir = create_run_dir(config, options.run_dir, options.overwrite);
  if (log) log("run directory: " + dir.string());
  if (log) log(describe_model(config, c));
  write_file_atomic(dir / "config.toml", config.to_toml());
  TrainResult trained = train(config, c, dir, log);
  if (trained.ema.empty()) {
    if (c.model->trainable()) save_weights(*c.model, dir / "model.pt");
  } else {
    // model.pt (raw) and model-ema.pt side by side; the model keeps the weights sampling uses.
    std::vector<torch::Tensor> in_use = swap_parameters(*c.model, trained.raw);
    save_weights(*c.model, dir / "model.pt");
    swap_parameters(*c.model, trained.ema);
    save_weights(*c.model, dir / "model-ema.pt");
    swap_parameters(*c.model, in_use);
  }
  write_loss_curve(dir, trained);
  if (options.do_sample) {
    write_outputs(config, c, dir, &trained, log);
  } else {
    write_file_atomic(dir / "summary.json", json{{"train", train_json(trained)}}.dump(2) + "\n");
  }
  return dir;
}

fs::path sample_job(const fs::path& run_dir, const Registry& registry,
                    const std::vector<std::string>& overrides, const std::optional<fs::path>& out_dir,
                    const Logger& log) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) throw InputError(run_dir.string() + ": no such run directory");
  ConfigOptions options;
  options.overrides = overrides;
  PipelineConfig config = load_config(run_dir / "config.toml", registry, options);
  apply_thread_setting(config);
  Components c = build_components(config, registry);
  const fs::path ema = run_dir / "model-ema.pt";
  const bool use_ema = config.table("sample").boolean("use_ema") && fs::exists(ema, ec);
  if (c.model->trainable()) load_weights(*c.model, use_ema ? ema : run_dir / "model.pt");

  fs::path dir;
  if (out_dir) {
    dir = *out_dir;
    if (fs::exists(dir, ec) && !(fs::is_directory(dir, ec) && fs::is_empty(dir, ec)))
      throw InputError(dir.string() + ": the output directory exists and is not empty");
  } else {
    fs::path base = run_dir / ("sample-" + config.component("solver").type);
    dir = base;
    for (int i = 2; fs::exists(dir, ec); ++i) dir = base.string() + "-" + std::to_string(i);
  }
  fs::create_directories(dir, ec);
  if (ec) throw InputError(dir.string() + ": cannot create: " + ec.message());
  if (log) log("sample directory: " + dir.string());
  if (log && c.model->trainable())
    log(use_ema ? "weights: the EMA weights (model-ema.pt)" : "weights: the raw weights (model.pt)");
  write_file_atomic(dir / "config.toml", config.to_toml());
  write_outputs(config, c, dir, nullptr, log);
  return dir;
}

}  // namespace pathline
