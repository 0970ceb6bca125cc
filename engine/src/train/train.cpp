#include "pathline/engine/train.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <fstream>

#include "../precision.hpp"
#include "pathline/engine/random.hpp"

namespace pathline {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr double kPi = 3.14159265358979323846;

}  // namespace

LearningRateSchedule::LearningRateSchedule(const Params& train)
    : base(train.real("lr")),
      warmup(train.integer("warmup_steps")),
      steps(train.integer("steps")),
      cosine(train.string("lr_schedule") == "cosine") {}

double LearningRateSchedule::at(std::int64_t step) const {
  if (warmup > 0 && step < warmup) return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (cosine && steps > warmup) {
    double progress = static_cast<double>(step - warmup) / static_cast<double>(steps - warmup);
    return base * 0.5 * (1.0 + std::cos(kPi * progress));
  }
  return base;
}

const std::map<std::string, LossWeighting>& loss_weightings() {
  // Per-sample weights w(t) of SD3 (Esser et al. 2024); in our convention s = 1 - t is the noise level.
  static const std::map<std::string, LossWeighting> weightings = {
      {"none", [](const PathCoefficients&, const torch::Tensor&) { return torch::Tensor(); }},
      // 1 / sigma_t^2, capped at 1e4 where sigma_t -> 0.
      {"sigma_sqrt", [](const PathCoefficients& c,
                        const torch::Tensor&) { return c.sigma.square().clamp_min(1e-4).reciprocal(); }},
      // sigma_t^2: the score target -x0 / sigma_t, weighted so, is the noise target's size.
      {"sigma_squared", [](const PathCoefficients& c, const torch::Tensor&) { return c.sigma.square(); }},
      // The density of cosmap time sampling, 2 / (pi (1 - 2 s + 2 s^2)).
      {"cosmap",
       [](const PathCoefficients& c, const torch::Tensor& t) {
         torch::Tensor s = (1.0 - t).view(c.alpha.sizes());
         return (2.0 / kPi) / (1.0 - 2.0 * s + 2.0 * s.square());
       }},
  };
  return weightings;
}

Trainer::Trainer(const PipelineConfig& config, Components& components, std::uint64_t rank)
    : c_(components),
      model_(*components.model),
      params_(components.model->parameters()),
      gen_(make_generator(static_cast<std::uint64_t>(config.table("run").integer("seed")), Stream::train,
                          rank)),
      schedule_(config.table("train")),
      batch_(config.table("train").integer("batch_size")),
      rank_(static_cast<std::int64_t>(components.data().shape.size()) + 1),
      grad_clip_(config.table("train").real("grad_clip")),
      ema_decay_(config.table("train").real("ema_decay")),
      label_dropout_(config.table("train").real("label_dropout")),
      ema_warmup_(config.table("train").boolean("ema_warmup")),
      bf16_(wants_bf16(config.table("train").string("precision"))) {
  const Params& tp = config.table("train");
  std::string weighting = tp.string("loss_weighting");
  if (weighting == "auto")
    weighting = components.parameterization->predicts() == Quantity::score ? "sigma_squared" : "none";
  auto it = loss_weightings().find(weighting);
  if (it == loss_weightings().end())
    throw InputError("train.loss_weighting: unknown weighting '" + weighting + "'");
  weighting_ = it->second;
  const auto& betas = tp.real_list("betas");
  optimizer_ = std::make_unique<torch::optim::AdamW>(params_, torch::optim::AdamWOptions(tp.real("lr"))
                                                                  .betas({betas[0], betas[1]})
                                                                  .weight_decay(tp.real("weight_decay")));
  if (ema_decay_ > 0) {
    torch::NoGradGuard no_grad;
    for (const auto& p : params_) ema_.push_back(p.detach().clone());
  }
  model_.train();
}

torch::Tensor Trainer::step() {
  static_cast<torch::optim::AdamWOptions&>(optimizer_->param_groups()[0].options()).lr(schedule_.at(step_));
  const torch::Device device = c_.context.device;

  Batch target = c_.dataset->sample(batch_, gen_);
  Batch source = c_.source->sample(batch_, gen_);
  target.x = target.x.to(device);
  source.x = source.x.to(device);
  std::tie(source, target) = c_.coupling->couple(std::move(source), std::move(target), gen_);
  torch::Tensor t = c_.time_sampler->sample(batch_, gen_).to(device);

  // Label dropout: the model also learns the unconditional field, which guidance needs.
  Condition condition;
  if (target.labels.defined()) {
    condition.labels = target.labels.to(device, torch::kInt64);
    if (label_dropout_ > 0) {
      torch::Tensor drop = torch::rand({batch_}, gen_) < label_dropout_;
      condition.labels = condition.labels.masked_fill(drop.to(device), kNullLabel);
    }
  }

  PathCoefficients coef = c_.path->coefficients(t).broadcast_to_rank(rank_);
  torch::Tensor x_t = Path::interpolate(coef, source.x, target.x);
  torch::Tensor goal = c_.parameterization->target(source.x, target.x, coef);
  torch::Tensor output;
  {
    AutocastGuard autocast(bf16_, device);
    output = model_.forward(x_t, t, condition);
  }
  if (output.scalar_type() != goal.scalar_type()) output = output.to(goal.scalar_type());
  torch::Tensor weight = weighting_(coef, t);
  torch::Tensor loss =
      weight.defined() ? (weight * (output - goal).square()).mean() : torch::mse_loss(output, goal);

  for (auto& p : params_) p.mutable_grad().reset();  // set_to_none: no zero-fill kernels
  loss.backward();
  if (gradient_hook) gradient_hook(params_);
  if (grad_clip_ > 0) torch::nn::utils::clip_grad_norm_(params_, grad_clip_);
  optimizer_->step();
  if (!ema_.empty()) {
    torch::NoGradGuard no_grad;
    const double decay = ema_decay_at(step_);
    for (std::size_t i = 0; i < params_.size(); ++i) ema_[i].lerp_(params_[i], 1.0 - decay);
  }
  ++step_;
  return loss.detach();
}

double Trainer::ema_decay_at(std::int64_t step) const {
  if (!ema_warmup_) return ema_decay_;
  // The warm-up of Tarvainen & Valpola 2017 (and of most diffusion code bases): early on the average
  // follows the weights closely, so a short run's EMA is not mostly its random initialisation.
  return std::min(ema_decay_, static_cast<double>(1 + step) / static_cast<double>(10 + step));
}

void Trainer::copy_sampling_weights_to_model() {
  if (ema_.empty()) return;
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params_.size(); ++i) params_[i].copy_(ema_[i]);
}

namespace {

void write_state(torch::serialize::OutputArchive& archive, const std::string& key,
                 const Dataset::State& state) {
  torch::serialize::OutputArchive sub;
  for (const auto& [name, tensor] : state) sub.write(name, tensor);
  archive.write(key, sub);
}

Dataset::State read_state(torch::serialize::InputArchive& archive, const std::string& key) {
  torch::serialize::InputArchive sub;
  archive.read(key, sub);
  Dataset::State state;
  for (const auto& name : sub.keys()) {
    torch::Tensor tensor;
    sub.read(name, tensor);
    state[name] = tensor;
  }
  return state;
}

}  // namespace

void Trainer::save_state(torch::serialize::OutputArchive& archive) const {
  archive.write("step", torch::tensor(step_, torch::kInt64));
  torch::serialize::OutputArchive model;
  model_.save(model);
  archive.write("model", model);
  torch::serialize::OutputArchive optimizer;
  optimizer_->save(optimizer);
  archive.write("optimizer", optimizer);
  for (std::size_t i = 0; i < ema_.size(); ++i) archive.write("ema." + std::to_string(i), ema_[i]);
  archive.write("generator.train", gen_.get_state());
  archive.write("generator.global", at::detail::getDefaultCPUGenerator().get_state());
  write_state(archive, "dataset", c_.dataset->state());
  write_state(archive, "source", c_.source->state());
}

void Trainer::load_state(torch::serialize::InputArchive& archive) {
  torch::Tensor step;
  archive.read("step", step);
  step_ = step.item<std::int64_t>();
  torch::serialize::InputArchive model;
  archive.read("model", model);
  model_.load(model);
  torch::serialize::InputArchive optimizer;
  archive.read("optimizer", optimizer);
  optimizer_->load(optimizer);
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < ema_.size(); ++i) {
    torch::Tensor value;
    archive.read("ema." + std::to_string(i), value);
    ema_[i].copy_(value);
  }
  torch::Tensor state;
  archive.read("generator.train", state);
  gen_.set_state(state);
  archive.read("generator.global", state);
  at::Generator global = at::detail::getDefaultCPUGenerator();
  global.set_state(state);
  c_.dataset->set_state(read_state(archive, "dataset"));
  c_.source->set_state(read_state(archive, "source"));
}

TrainResult train(const PipelineConfig& config, Components& c, const std::filesystem::path& run_dir,
                  const Logger& log) {
  const Params& tp = config.table("train");
  TrainResult result;
  const std::int64_t steps = tp.integer("steps");
  if (!c.model->trainable() || steps == 0) {
    if (log)
      log(c.model->trainable() ? "train: steps = 0, nothing to train"
                               : "train: the model has nothing to learn; skipping training");
    return result;
  }
  const std::int64_t log_every = tp.integer("log_every");
  Trainer trainer(config, c);
  const LearningRateSchedule schedule(tp);

  std::ofstream csv;
  if (!run_dir.empty()) {
    csv.open(run_dir / "metrics.csv", std::ios::trunc);
    csv << "step,loss,lr,elapsed_s\n";
  }

  const auto start = Clock::now();
  torch::Tensor window_loss =
      torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(c.context.device));
  std::int64_t window = 0;
  for (std::int64_t step = 0; step < steps; ++step) {
    window_loss += trainer.step();
    ++window;
    if ((step + 1) % log_every == 0 || step + 1 == steps) {
      double mean = window_loss.item<double>() / static_cast<double>(window);
      window_loss.zero_();
      window = 0;
      if (!std::isfinite(mean))
        throw Error(
            fmt::format("training diverged at step {}: loss is {}; lower train.lr or set train.grad_clip",
                        step + 1, mean));
      result.losses.push_back(mean);
      result.logged.push_back(step + 1);
      result.final_loss = mean;
      double elapsed = seconds_since(start);
      if (csv.is_open())
        csv << fmt::format("{},{:.8g},{:.6g},{:.3f}\n", step + 1, mean, schedule.at(step), elapsed)
            << std::flush;  // a row is there to be watched (tail -f) while the run goes on
      if (log && ((step + 1) % (log_every * 5) == 0 || step + 1 == steps))
        log(fmt::format("step {:>6}/{}  loss {:.5f}  lr {:.2e}  {:.1f}s", step + 1, steps, mean,
                        schedule.at(step), elapsed));
    }
  }
  result.steps = steps;
  result.seconds = seconds_since(start);
  result.samples_per_second = static_cast<double>(steps * tp.integer("batch_size")) / result.seconds;
  // A training step costs about three forward passes (forward, and backward's two products).
  if (double macs = c.model->macs_per_sample(); macs > 0)
    result.gflops = 3.0 * 2.0 * macs * result.samples_per_second / 1e9;
  if (log)
    log(fmt::format(
        "train: {} steps in {:.1f}s, {:.1f} samples/s{}", steps, result.seconds, result.samples_per_second,
        result.gflops > 0 ? fmt::format(", {:.1f} GFLOP/s (3 x 2 x MACs per sample)", result.gflops)
                          : std::string()));
  if (trainer.has_ema()) {
    torch::NoGradGuard no_grad;
    for (const auto& p : c.model->parameters()) result.raw.push_back(p.detach().clone());
    result.ema = trainer.ema_weights();
    if (config.table("sample").boolean("use_ema")) trainer.copy_sampling_weights_to_model();
  }
  c.model->eval();
  return result;
}

}  // namespace pathline
