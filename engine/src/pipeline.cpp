#include "pathline/engine/pipeline.hpp"

#include <chrono>
#include <cmath>
#include <fstream>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "pathline/engine/io.hpp"

namespace pathline {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Independent random streams, derived from [run] seed, so that changing how many samples are drawn
// for sampling never changes training, and vice versa.
enum Stream : std::uint64_t { kTrainStream = 0, kSampleStream = 1, kEvalStream = 2, kInitStream = 3 };

at::Generator make_generator(const PipelineConfig& config, Stream stream) {
  auto seed = static_cast<std::uint64_t>(config.table("run").integer("seed"));
  return at::make_generator<at::CPUGeneratorImpl>(seed * 4 + stream);
}

void write_file(const std::filesystem::path& file, const std::string& text) {
  auto tmp = file;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) throw Error(file.string() + ": cannot write");
  }
  std::filesystem::rename(tmp, file);
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  return fmt::format("{:.9g}", v);
}

// The model as a vector field: converts whatever the parameterization predicts into velocity
// (and score), counting evaluations.
class ModelField final : public VectorField {
 public:
  ModelField(Model& model, const Path& path, const Parameterization& param, std::int64_t rank)
      : model_(model), path_(path), param_(param), rank_(rank) {}

  torch::Tensor velocity(const torch::Tensor& x, double t) override { return evaluate(x, t, Quantity::velocity); }
  torch::Tensor score(const torch::Tensor& x, double t) override { return evaluate(x, t, Quantity::score); }
  std::int64_t evaluations() const { return evaluations_; }

 private:
  torch::Tensor evaluate(const torch::Tensor& x, double t, Quantity want) {
    ++evaluations_;
    auto tt = torch::full({x.size(0)}, t, x.options());
    auto out = model_.forward(x, tt);
    if (param_.predicts() == want) return out;
    auto c = path_.coefficients(tt).broadcast_to_rank(rank_);
    return param_.convert(out, x, c, want);
  }
  Model& model_;
  const Path& path_;
  const Parameterization& param_;
  std::int64_t rank_;
  std::int64_t evaluations_ = 0;
};

// The learning-rate schedule, read from [train] once so that the loop does no config lookups.
struct LearningRateSchedule {
  double base;
  std::int64_t warmup, steps;
  bool cosine;

  explicit LearningRateSchedule(const Params& train)
      : base(train.real("lr")),
        warmup(train.integer("warmup_steps")),
        steps(train.integer("steps")),
        cosine(train.string("lr_schedule") == "cosine") {}

  double at(std::int64_t step) const {
    if (warmup > 0 && step < warmup) return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
    if (cosine && steps > warmup) {
      double progress = static_cast<double>(step - warmup) / static_cast<double>(steps - warmup);
      return base * 0.5 * (1.0 + std::cos(M_PI * progress));
    }
    return base;
  }
};

}  // namespace

void apply_thread_setting(const PipelineConfig& config) {
  std::int64_t threads = config.table("run").integer("threads");
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(static_cast<int>(threads));
}

Components build_components(const PipelineConfig& config, const Registry& registry) {
  Components c;
  BuildContext& ctx = c.context;
  ctx.device = config.table("run").string("device") == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  ctx.seed = static_cast<std::uint64_t>(config.table("run").integer("seed"));
  // Parameter initialisation draws from LibTorch's global generator.
  torch::manual_seed(ctx.seed * 4 + kInitStream);

  auto build = [&](Kind kind, auto tag) {
    using Interface = typename decltype(tag)::type;
    const ComponentConfig& cc = config.component(kind);
    return registry.create<Interface>(cc.type, cc.params, ctx);
  };
  c.dataset = build(Kind::dataset, std::common_type<Dataset>{});
  ctx.dataset = c.dataset;
  ctx.data_shape = c.dataset->sample_shape();
  c.path = build(Kind::path, std::common_type<Path>{});
  ctx.path = c.path;
  c.coupling = build(Kind::coupling, std::common_type<Coupling>{});
  c.time_sampler = build(Kind::time_sampler, std::common_type<TimeSampler>{});
  c.parameterization = build(Kind::parameterization, std::common_type<Parameterization>{});
  c.model = build(Kind::model, std::common_type<Model>{});
  c.model->to(ctx.device);
  c.solver = build(Kind::solver, std::common_type<Solver>{});
  for (const auto& m : config.metrics) c.metrics.emplace_back(m.type, registry.create<Metric>(m.type, m.params, ctx));
  return c;
}

TrainResult train(const PipelineConfig& config, Components& c, const std::filesystem::path& run_dir,
                  const Logger& log) {
  const Params& tp = config.table("train");
  TrainResult result;
  const std::int64_t steps = tp.integer("steps");
  if (!c.model->trainable() || steps == 0) {
    if (log) log(c.model->trainable() ? "train: steps = 0, nothing to train" : "train: the model has nothing to learn; skipping training");
    return result;
  }

  // Everything the loop needs is read here, once.
  const std::int64_t batch = tp.integer("batch_size");
  const std::int64_t log_every = tp.integer("log_every");
  const double grad_clip = tp.real("grad_clip");
  const double ema_decay = tp.real("ema_decay");
  const auto& betas = tp.real_list("betas");
  const LearningRateSchedule schedule(tp);
  enum class Weighting { none, sigma_sqrt, cosmap };
  const std::string& weighting_name = tp.string("loss_weighting");
  const Weighting weighting = weighting_name == "sigma_sqrt" ? Weighting::sigma_sqrt
                              : weighting_name == "cosmap"   ? Weighting::cosmap
                                                             : Weighting::none;
  const torch::Device device = c.context.device;
  const std::int64_t rank = static_cast<std::int64_t>(c.context.data_shape.size()) + 1;
  at::Generator gen = make_generator(config, kTrainStream);

  Model& model = *c.model;
  model.train();
  std::vector<torch::Tensor> params = model.parameters();
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(tp.real("lr"))
                                             .betas({betas[0], betas[1]})
                                             .weight_decay(tp.real("weight_decay")));
  auto& group_options = static_cast<torch::optim::AdamWOptions&>(optimizer.param_groups()[0].options());

  std::vector<torch::Tensor> ema;
  if (ema_decay > 0) {
    torch::NoGradGuard no_grad;
    for (const auto& p : params) ema.push_back(p.detach().clone());
  }

  std::ofstream csv;
  if (!run_dir.empty()) {
    csv.open(run_dir / "metrics.csv", std::ios::trunc);
    csv << "step,loss,lr,elapsed_s\n";
  }

  const auto start = Clock::now();
  torch::Tensor window_loss = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  std::int64_t window = 0;
  for (std::int64_t step = 0; step < steps; ++step) {
    const double lr = schedule.at(step);
    group_options.lr(lr);

    torch::Tensor x1 = c.dataset->sample(batch, gen).to(device);
    torch::Tensor x0 = at::randn(x1.sizes(), gen, x1.options());
    std::tie(x0, x1) = c.coupling->couple(x0, x1, gen);
    torch::Tensor t = c.time_sampler->sample(batch, gen).to(device);
    PathCoefficients coef = c.path->coefficients(t).broadcast_to_rank(rank);
    torch::Tensor x_t = Path::interpolate(coef, x0, x1);
    torch::Tensor target = c.parameterization->target(x0, x1, coef);

    torch::Tensor loss;
    if (weighting == Weighting::none) {
      loss = torch::mse_loss(model.forward(x_t, t), target);
    } else {
      // Per-sample weights w(t) (SD3, Esser et al. 2024), in our convention s = 1 - t is the noise level.
      torch::Tensor w;
      if (weighting == Weighting::sigma_sqrt) {
        w = coef.sigma.square().clamp_min(1e-4).reciprocal();  // capped at 1e4 where sigma_t -> 0
      } else {
        torch::Tensor s = (1.0 - t).view(coef.alpha.sizes());
        w = (2.0 / M_PI) / (1.0 - 2.0 * s + 2.0 * s.square());
      }
      loss = (w * (model.forward(x_t, t) - target).square()).mean();
    }
    for (auto& p : params) p.mutable_grad().reset();  // set_to_none: no zero-fill kernels
    loss.backward();
    if (grad_clip > 0) torch::nn::utils::clip_grad_norm_(params, grad_clip);
    optimizer.step();
    if (ema_decay > 0) {
      torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < params.size(); ++i) ema[i].lerp_(params[i], 1.0 - ema_decay);
    }

    window_loss += loss.detach();
    ++window;
    if ((step + 1) % log_every == 0 || step + 1 == steps) {
      double mean = window_loss.item<double>() / static_cast<double>(window);
      window_loss.zero_();
      window = 0;
      if (!std::isfinite(mean))
        throw Error(fmt::format("training diverged at step {}: loss is {}; lower train.lr or set train.grad_clip",
                                step + 1, mean));
      result.losses.push_back(mean);
      result.final_loss = mean;
      double elapsed = seconds_since(start);
      if (csv.is_open()) csv << fmt::format("{},{:.8g},{:.6g},{:.3f}\n", step + 1, mean, lr, elapsed);
      if (log && ((step + 1) % (log_every * 5) == 0 || step + 1 == steps))
        log(fmt::format("step {:>6}/{}  loss {:.5f}  lr {:.2e}  {:.1f}s", step + 1, steps, mean, lr, elapsed));
    }
  }
  result.steps = steps;
  result.seconds = seconds_since(start);

  if (ema_decay > 0) {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(ema[i]);
  }
  model.eval();
  return result;
}

SampleResult sample(const PipelineConfig& config, Components& c) {
  const Params& sp = config.table("sample");
  const std::int64_t n = sp.integer("n");
  const std::int64_t batch = std::min(n, sp.integer("batch_size"));
  const std::int64_t traj_count = std::min(n, sp.integer("trajectories"));
  at::Generator gen = make_generator(config, kSampleStream);

  c10::InferenceMode inference;
  c.model->eval();
  std::vector<std::int64_t> shape = {0};
  shape.insert(shape.end(), c.context.data_shape.begin(), c.context.data_shape.end());
  ModelField field(*c.model, *c.path, *c.parameterization, static_cast<std::int64_t>(shape.size()));

  const double t_start = sp.real("t_start"), t_end = sp.real("t_end");
  if (!(t_start < t_end))
    throw InputError(fmt::format("sample.t_start = {} must be below sample.t_end = {}", t_start, t_end));
  const double prior_scale = c.path->coefficients(torch::full({1}, t_start, torch::kFloat64)).sigma.item<double>();

  SampleResult result;
  std::vector<torch::Tensor> chunks, states;
  const auto start = Clock::now();
  std::int64_t evaluations_first_batch = 0;
  for (std::int64_t done = 0; done < n; done += batch) {
    shape[0] = std::min(batch, n - done);
    // The prior at t_start is N(alpha x1, sigma^2 I) with x1 unknown: start from sigma_{t_start} z
    // (1 for paths that start at pure noise; sigma_max for variance-exploding ones).
    torch::Tensor x0 = at::randn(shape, gen, torch::TensorOptions().device(c.context.device)).mul_(prior_scale);
    SolveRequest request;
    request.t0 = t_start;
    request.t1 = t_end;
    request.generator = &gen;
    if (done == 0 && traj_count > 0)
      request.observer = [&](double, const torch::Tensor& x) { states.push_back(x.narrow(0, 0, traj_count).to(torch::kCPU).clone()); };
    chunks.push_back(c.solver->solve(field, x0, request).to(torch::kCPU));
    if (done == 0) evaluations_first_batch = field.evaluations();
  }
  result.seconds = seconds_since(start);
  result.nfe = evaluations_first_batch;
  result.samples = torch::cat(chunks);
  if (!states.empty()) result.trajectories = torch::stack(states);
  return result;
}

std::map<std::string, double> evaluate(const PipelineConfig& config, Components& c, const torch::Tensor& samples) {
  std::map<std::string, double> out;
  if (c.metrics.empty()) return out;
  std::int64_t n = config.table("eval").integer("reference_n");
  if (n == 0) n = samples.size(0);
  at::Generator gen = make_generator(config, kEvalStream);
  torch::Tensor reference = c.dataset->sample(n, gen);
  c10::InferenceMode inference;
  for (auto& [name, metric] : c.metrics) out[name] = metric->compute(samples, reference);
  return out;
}

std::filesystem::path create_run_dir(const PipelineConfig& config,
                                     const std::optional<std::filesystem::path>& explicit_dir, bool overwrite) {
  namespace fs = std::filesystem;
  std::error_code ec;
  auto is_empty_or_missing = [&](const fs::path& p) { return !fs::exists(p, ec) || (fs::is_directory(p, ec) && fs::is_empty(p, ec)); };
  fs::path dir;
  if (explicit_dir) {
    dir = *explicit_dir;
    if (!is_empty_or_missing(dir) && !overwrite)
      throw InputError(dir.string() + ": the run directory exists and is not empty; pass --overwrite to replace it");
  } else {
    const Params& run = config.table("run");
    std::string name = run.string("name");
    if (name.empty()) name = config.source.stem().string();
    if (name.empty()) name = "run";
    fs::path base = fs::path(run.string("dir")) / name;
    dir = base;
    for (int i = 2; !overwrite && !is_empty_or_missing(dir); ++i) dir = base.string() + "-" + std::to_string(i);
  }
  if (overwrite && fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) throw InputError(dir.string() + ": exists and is not a directory");
    for (const auto& entry : fs::directory_iterator(dir)) fs::remove_all(entry.path());
  }
  fs::create_directories(dir, ec);
  if (ec) throw InputError(dir.string() + ": cannot create the run directory: " + ec.message());
  return dir;
}

void save_weights(Model& model, const std::filesystem::path& file) {
  torch::serialize::OutputArchive archive;
  model.save(archive);
  auto tmp = file;
  tmp += ".tmp";
  archive.save_to(tmp.string());
  std::filesystem::rename(tmp, file);
}

void load_weights(Model& model, const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec))
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

void write_outputs(const PipelineConfig& config, Components& c, const std::filesystem::path& dir,
                   const TrainResult* trained, const Logger& log) {
  SampleResult s = sample(config, c);
  if (log) log(fmt::format("sample: {} samples, solver {} ({} NFE) in {:.2f}s", s.samples.size(0),
                           config.component(Kind::solver).type, s.nfe, s.seconds));
  write_npy(dir / "samples.npy", s.samples);
  auto metrics = evaluate(config, c, s.samples);
  for (const auto& [name, value] : metrics) if (log) log(fmt::format("eval: {} = {:.6f}", name, value));

  // Pictures of 2D data (the first two coordinates of anything flat).
  if (c.context.data_shape.size() == 1 && c.context.data_shape[0] >= 2) {
    at::Generator gen = make_generator(config, kEvalStream);
    torch::Tensor data = c.dataset->sample(std::min<std::int64_t>(s.samples.size(0), 20000), gen);
    write_png(dir / "samples.png", plot_samples(data, s.samples));
    if (s.trajectories.defined()) write_png(dir / "trajectories.png", plot_trajectories(s.trajectories, data));
  }

  std::string json = "{\n";
  if (trained)
    json += fmt::format("  \"train\": {{\"steps\": {}, \"final_loss\": {}, \"seconds\": {}}},\n", trained->steps,
                        json_number(trained->final_loss), json_number(trained->seconds));
  json += "  \"metrics\": {";
  bool first = true;
  for (const auto& [name, value] : metrics) {
    json += fmt::format("{}\"{}\": {}", first ? "" : ", ", name, json_number(value));
    first = false;
  }
  json += "},\n";
  json += fmt::format("  \"sampling\": {{\"solver\": \"{}\", \"n\": {}, \"nfe\": {}, \"seconds\": {}}}\n}}\n",
                      config.component(Kind::solver).type, s.samples.size(0), s.nfe, json_number(s.seconds));
  write_file(dir / "summary.json", json);
}

}  // namespace

std::filesystem::path run_job(const PipelineConfig& config, const Registry& registry, const JobOptions& options,
                              const Logger& log) {
  apply_thread_setting(config);
  Components c = build_components(config, registry);
  std::filesystem::path dir = create_run_dir(config, options.run_dir, options.overwrite);
  if (log) log("run directory: " + dir.string());
  write_file(dir / "config.toml", config.to_toml());
  TrainResult trained = train(config, c, dir, log);
  if (c.model->trainable()) save_weights(*c.model, dir / "model.pt");
  if (options.do_sample) {
    write_outputs(config, c, dir, &trained, log);
  } else {
    write_file(dir / "summary.json",
               fmt::format("{{\n  \"train\": {{\"steps\": {}, \"final_loss\": {}, \"seconds\": {}}}\n}}\n",
                           trained.steps, json_number(trained.final_loss), json_number(trained.seconds)));
  }
  return dir;
}

std::filesystem::path sample_job(const std::filesystem::path& run_dir, const Registry& registry,
                                 const std::vector<std::string>& overrides,
                                 const std::optional<std::filesystem::path>& out_dir, const Logger& log) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) throw InputError(run_dir.string() + ": no such run directory");
  ConfigOptions options;
  options.overrides = overrides;
  PipelineConfig config = load_config(run_dir / "config.toml", registry, options);
  apply_thread_setting(config);
  Components c = build_components(config, registry);
  if (c.model->trainable()) load_weights(*c.model, run_dir / "model.pt");

  fs::path dir;
  if (out_dir) {
    dir = *out_dir;
    if (fs::exists(dir, ec) && !(fs::is_directory(dir, ec) && fs::is_empty(dir, ec)))
      throw InputError(dir.string() + ": the output directory exists and is not empty");
  } else {
    fs::path base = run_dir / ("sample-" + config.component(Kind::solver).type);
    dir = base;
    for (int i = 2; fs::exists(dir, ec); ++i) dir = base.string() + "-" + std::to_string(i);
  }
  fs::create_directories(dir, ec);
  if (ec) throw InputError(dir.string() + ": cannot create: " + ec.message());
  if (log) log("sample directory: " + dir.string());
  write_file(dir / "config.toml", config.to_toml());
  write_outputs(config, c, dir, nullptr, log);
  return dir;
}

}  // namespace pathline
