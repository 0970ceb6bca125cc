// The trainer: a batch drawn, one optimizer step (micro-batches, the non-finite check, the
// update), the EMA, and the training state for checkpoints. The optimizer is in optimizer.cpp,
// the data-parallel gradient buckets in buckets.cpp, the training loop in loop.cpp.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "../device.hpp"
#include "../precision.hpp"
#include "buckets.hpp"
#include "optimizer.hpp"
#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/distributed.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/engine/random.hpp"
#include "pathline/engine/train.hpp"

namespace pathline {

NonFiniteError::NonFiniteError(std::int64_t step, std::string quantity, double value)
    : Error(fmt::format("training stopped at step {}: the {} is {} (train.on_nonfinite = \"stop\")", step,
                        quantity, std::isnan(value) ? std::string("nan") : fmt::format("{}", value))),
      step(step),
      quantity(std::move(quantity)),
      value(value) {}

namespace {

// A testing aid: PATHLINE_FAULT=kill-in-step:N makes the process SIGKILL itself in the middle of
// step N (after the backward pass, before the update), as a machine failure would.
std::int64_t fault_step() {
  const char* fault = std::getenv("PATHLINE_FAULT");
  const std::string prefix = "kill-in-step:";
  if (!fault || std::string(fault).rfind(prefix, 0) != 0) return -1;
  return std::atoll(fault + prefix.size());
}

// The model handed to the objective: forward calls go through plugin_call, so that an exception the
// model throws names the [model], not the objective that called it.
class NamedModel final : public Model {
 public:
  NamedModel(Model& model, const ComponentOrigin& origin) : model_(model), origin_(origin) {}
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const Condition& condition) override {
    return plugin_call(origin_, "forward", [&] { return model_.forward(x, t, condition); });
  }
  bool trainable() const override { return model_.trainable(); }
  double macs_per_sample() const override { return model_.macs_per_sample(); }
  bool rows_independent() const override { return model_.rows_independent(); }
  std::vector<std::string> times() const override { return model_.times(); }

 private:
  Model& model_;
  const ComponentOrigin& origin_;
};

}  // namespace

Trainer::Trainer(const PipelineConfig& config, Components& components, std::uint64_t rank)
    : c_(components),
      model_(components.model ? static_cast<torch::nn::Module&>(*components.model)
                              : static_cast<torch::nn::Module&>(*components.autoencoder)),
      autoencoder_(!components.model),
      params_(model_.parameters()),
      grads_(std::make_unique<GradientBuckets>()),
      gen_(make_generator(config.run.seed, Stream::train, rank)),
      schedule_(config.train),
      batch_(config.train.batch_size),
      rank_(static_cast<std::int64_t>(components.flow().shape.size()) + 1),
      accumulate_(config.train.accumulate),
      grad_clip_(config.train.grad_clip),
      ema_decay_(config.train.ema_decay),
      label_dropout_(config.train.label_dropout),
      ema_warmup_(config.train.ema_warmup),
      bf16_(config.train.bf16()),
      skip_nonfinite_(config.train.on_nonfinite == "skip"),
      fault_step_(fault_step()) {
  const TrainSettings& tp = config.train;
  local_batch_ = batch_;
  seed_ = config.run.seed;
  std::string weighting = tp.loss_weighting;
  if (weighting == "auto")
    weighting = components.parameterization->predicts() == Quantity::score ? "sigma_squared" : "none";
  auto it = loss_weightings().find(weighting);
  if (it == loss_weightings().end())
    throw InputError("train.loss_weighting: unknown weighting '" + weighting + "'");
  weighting_ = it->second;
  if (accumulate_ > batch_)
    throw InputError(
        fmt::format("train.accumulate = {} is more micro-batches than train.batch_size = {} has samples",
                    accumulate_, batch_));
  if (tp.fused_optimizer && FusedAdam::applies(params_)) {
    fused_ = std::make_unique<FusedAdam>(params_, tp, tp.optimizer == "adamw", ema_decay_ > 0);
    ema_ = fused_->ema_views;
  } else {
    optimizer_ = make_optimizer(tp, params_);
    if (ema_decay_ > 0) {
      torch::NoGradGuard no_grad;
      for (const auto& p : params_) ema_.push_back(p.detach().clone());
    }
  }
  if (components.model) {
    if (!components.objective) throw Error("training a model needs an [objective] (none was built)");
    named_model_ = std::make_shared<NamedModel>(*components.model, components.origin("model"));
    for (const auto& name : components.objective->statistics()) statistics_[name] = 0.0;
  }
  model_.train();
}

Trainer::~Trainer() {
  // The gradient hooks of attach() point at this trainer: the model outlives it.
  for (std::size_t i = 0; i < grads_->hooks.size(); ++i) params_[i].remove_hook(grads_->hooks[i]);
}

Trainer::Draw Trainer::draw(at::Generator& gen, std::int64_t n) {
  const torch::Device device = c_.context.device;
  Batch target =
      plugin_call(c_.origin("dataset"), "drawing a batch", [&] { return c_.dataset->sample(n, gen); });
  if (autoencoder_) {
    // Training the autoencoder: the data batch is all there is.
    Draw d;
    d.x1 = to_device(target.x, device);
    if (target.labels.defined()) d.labels = to_device(target.labels.to(torch::kInt64), device);
    for (auto& [name, tensor] : target.extras) d.extras[name] = to_device(tensor, device);
    return d;
  }
  Batch source =
      plugin_call(c_.origin("source"), "drawing a batch", [&] { return c_.source->sample(n, gen); });
  target.x = to_device(target.x, device);
  source.x = to_device(source.x, device);
  if (c_.latent) {
    // A latent flow learns on the encoded batch (the posterior mean, scaled); the frozen encoder
    // sees the batch's labels before any dropout.
    Condition condition;
    if (target.labels.defined()) condition.labels = to_device(target.labels.to(torch::kInt64), device);
    target.x = c_.to_flow(target.x, condition);
  }
  std::tie(source, target) = plugin_call(c_.origin("coupling"), "coupling a batch", [&] {
    return c_.coupling->couple(std::move(source), std::move(target), gen);
  });
  Draw d;
  d.t = to_device(plugin_call(c_.origin("time_sampler"), "drawing times",
                              [&] { return c_.time_sampler->sample(n, gen); }),
                  device);
  // Label dropout: the model also learns the unconditional field, which guidance needs.
  if (target.labels.defined()) {
    d.labels = target.labels.to(torch::kInt64);
    if (label_dropout_ > 0) {
      torch::Tensor drop = torch::rand({n}, gen) < label_dropout_;
      d.labels = d.labels.masked_fill(drop.to(d.labels.device()), kNullLabel);
    }
    d.labels = to_device(d.labels, device);
  }
  for (auto& [name, tensor] : target.extras) d.extras[name] = to_device(tensor, device);
  d.at =
      plugin_call(c_.origin("path"), "sample", [&] { return c_.path->sample(source.x, target.x, d.t, gen); });
  d.x0 = std::move(source.x);
  d.x1 = std::move(target.x);
  return d;
}

void Trainer::simulate_ranks(int ranks) {
  rank_gens_.clear();
  if (ranks <= 1) return;
  for (int r = 0; r < ranks; ++r)
    rank_gens_.push_back(make_generator(seed_, Stream::train, static_cast<std::uint64_t>(r)));
}

void Trainer::gather_rank_states() {
  if (!dp_) return;
  rank_states_.clear();
  rank_states_["generator.train"] = dp_->all_gather(gen_.get_state());
  rank_states_["generator.global"] = dp_->all_gather(at::detail::getDefaultCPUGenerator().get_state());
  if (auto device_gen = device_generator(c_.context.device))
    rank_states_["generator.device"] = dp_->all_gather(device_gen->get_state());
  for (const auto& [name, tensor] : c_.dataset->state())
    rank_states_["dataset." + name] = dp_->all_gather(tensor);
  for (const auto& [name, tensor] : c_.source->state())
    rank_states_["source." + name] = dp_->all_gather(tensor);
}

torch::Tensor Trainer::step() {
  const double lr = schedule_.at(step_);
  if (optimizer_) optimizer_->param_groups()[0].options().set_lr(lr);
  const torch::Device device = c_.context.device;

  Draw all;
  if (rank_gens_.empty()) {
    all = draw(gen_, local_batch_);
  } else {
    // Every simulated rank's share from its own stream, then one batch.
    std::vector<Draw> shares;
    const auto ranks = static_cast<std::int64_t>(rank_gens_.size());
    for (std::int64_t r = 0; r < ranks; ++r)
      shares.push_back(draw(rank_gens_[r], batch_ / ranks + (r < batch_ % ranks ? 1 : 0)));
    auto cat = [&](auto member) {
      std::vector<torch::Tensor> parts;
      for (auto& share : shares)
        if (member(share).defined()) parts.push_back(member(share));
      return parts.empty() ? torch::Tensor() : torch::cat(parts);
    };
    all.x0 = cat([](Draw& d) -> torch::Tensor& { return d.x0; });
    all.x1 = cat([](Draw& d) -> torch::Tensor& { return d.x1; });
    all.t = cat([](Draw& d) -> torch::Tensor& { return d.t; });
    all.labels = cat([](Draw& d) -> torch::Tensor& { return d.labels; });
    all.at.x_t = cat([](Draw& d) -> torch::Tensor& { return d.at.x_t; });
    all.at.velocity = cat([](Draw& d) -> torch::Tensor& { return d.at.velocity; });
    for (const auto& [name, tensor] : shares.front().extras) {
      (void)tensor;
      all.extras[name] = cat([&](Draw& d) -> torch::Tensor& { return d.extras.at(name); });
    }
  }
  const torch::Tensor& t = all.t;
  const torch::Tensor& labels = all.labels;
  const std::int64_t batch = all.x1.size(0);

  for (auto& p : params_) p.mutable_grad().reset();  // set_to_none: no zero-fill kernels
  for (auto& [name, value] : statistics_) value = 0.0;
  // The whole batch is drawn at once (so that couplings see all of it and the draws do not depend
  // on `accumulate`); the model sees it in `accumulate` micro-batches whose gradients add up.
  torch::Tensor total;
  if (dp_) start_collecting();
  for (std::int64_t k = 0, begin = 0; k < accumulate_; ++k) {
    grads_->last_micro = k + 1 == accumulate_;
    const std::int64_t size = batch / accumulate_ + (k < batch % accumulate_ ? 1 : 0);
    // This micro-batch's rows of the batch (every tensor of the draw is sliced the same way).
    const std::int64_t first = begin;
    begin += size;
    auto part = [&](const torch::Tensor& x) { return accumulate_ == 1 ? x : x.narrow(0, first, size); };
    Condition condition;
    if (labels.defined()) condition.labels = part(labels);
    for (const auto& [name, tensor] : all.extras) condition.extras[name] = part(tensor);
    // The share of the (global) batch these samples are: the mean over ranks of the ranks' losses is
    // then the mean over the whole batch, also when the shares differ by one.
    const double share =
        static_cast<double>(size) / static_cast<double>(batch) *
        (dp_ ? static_cast<double>(batch * dp_->world().world_size) / static_cast<double>(batch_) : 1.0);
    if (autoencoder_) {
      torch::Tensor loss;
      {
        AutocastGuard autocast(bf16_, device);
        loss = plugin_call(c_.origin("autoencoder"), "loss",
                           [&] { return c_.autoencoder->loss(part(all.x1), condition, gen_).loss; });
      }
      if (!loss.defined() || loss.numel() != 1)
        throw Error(fmt::format("[autoencoder] (type '{}'): its loss is not a scalar",
                                c_.origin("autoencoder").type));
      loss = loss.to(torch::kFloat32).reshape({});
      if (share != 1.0) loss = loss * share;
      loss.backward();
      total = total.defined() ? total + loss.detach() : loss.detach();
      continue;
    }
    // The objective's batch: this micro-batch's rows, the path's coefficients at its times and the
    // [train] loss_weighting's weights.
    TrainingBatch b;
    b.t = part(t);
    b.x0 = part(all.x0);
    b.x1 = part(all.x1);
    b.at.x_t = part(all.at.x_t);
    if (all.at.velocity.defined()) b.at.velocity = part(all.at.velocity);
    b.coefficients = plugin_call(c_.origin("path"), "coefficients",
                                 [&] { return c_.path->coefficients(b.t).broadcast_to_rank(rank_); });
    b.weight = weighting_(b.coefficients, b.t);
    b.condition = std::move(condition);
    ObjectiveLoss out;
    {
      AutocastGuard autocast(bf16_, device);
      out = plugin_call(c_.origin("objective"), "loss",
                        [&] { return c_.objective->loss(*named_model_, b, gen_); });
    }
    if (!out.loss.defined() || out.loss.numel() != 1)
      throw Error(
          fmt::format("[objective] (type '{}'): its loss is not a scalar", c_.origin("objective").type));
    torch::Tensor loss = out.loss.dim() == 0 ? out.loss : out.loss.reshape({});
    if (loss.scalar_type() != torch::kFloat32) loss = loss.to(torch::kFloat32);
    for (const auto& [name, value] : out.statistics) statistics_[name] += value;
    if (share != 1.0) loss = loss * share;
    loss.backward();
    total = total.defined() ? total + loss.detach() : loss.detach();
  }
  if (fault_step_ == step_ + 1) std::raise(SIGKILL);
  ++step_;
  last_skipped_ = false;
  if (dp_) total = average_over_ranks(total);

  // A NaN or infinite loss or gradient: stop before the update spoils the weights, or drop the batch.
  std::string bad;
  double bad_value = total.item<double>();
  if (!std::isfinite(bad_value)) bad = "loss";
  std::vector<torch::Tensor> grads;
  // The global gradient norm: one fused pass, or LibTorch's per-tensor norms.
  auto gradient_norm = [&] {
    if (fused_) {
      fused_->gather_gradients();
      return std::sqrt(fused_->grad_square_sum());
    }
    grads.clear();
    for (const auto& p : params_)
      if (p.grad().defined()) grads.push_back(p.grad());
    return grads.empty() ? 0.0 : torch::stack(at::_foreach_norm(grads)).norm().item<double>();
  };
  double norm = 0.0;
  if (bad.empty()) {
    norm = gradient_norm();
    if (!std::isfinite(norm)) bad = "gradient norm", bad_value = norm;
  }
  if (!bad.empty()) {
    if (!skip_nonfinite_) {
      --step_;  // the step did not happen: the state is still the one before it
      throw NonFiniteError(step_ + 1, bad, bad_value);
    }
    ++skipped_;
    last_skipped_ = true;
    return total;
  }

  if (gradient_hook) {
    gradient_hook(params_);
    // The all-reduced gradient is the one clipped and applied.
    norm = gradient_norm();
  }
  // Clipping by the global norm, as torch.nn.utils.clip_grad_norm_ does.
  const double scale = grad_clip_ > 0 && norm > grad_clip_ ? grad_clip_ / (norm + 1e-6) : 1.0;
  const double ema_weight = ema_.empty() ? 0.0 : 1.0 - ema_decay_at(step_ - 1);
  if (fused_) {
    fused_->step(lr, scale, ema_weight);
    return total;
  }
  if (scale != 1.0) at::_foreach_mul_(grads, scale);
  optimizer_->step();
  if (!ema_.empty()) {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < params_.size(); ++i) ema_[i].lerp_(params_[i], ema_weight);
  }
  return total;
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

// The state under names that say what each tensor is: "model.<name>" (parameters and buffers),
// "optimizer.<parameter>.exp_avg" / ".exp_avg_sq" / ".max_exp_avg_sq" / ".step" (one layout for the
// fused pass and LibTorch's optimizer, so a run can resume with either), "ema.<parameter>",
// "generator.train" / ".global" / ".device", "dataset.<key>", "source.<key>", and per rank
// "rank<r>.<key>" with "world_size".
void Trainer::save_state(NamedState& state) const {
  state.add("step", torch::tensor(step_, torch::kInt64));
  state.add("skipped", torch::tensor(skipped_, torch::kInt64));
  for (auto& [name, tensor] : named_weights(model_)) state.add("model." + name, tensor);
  const auto names = model_.named_parameters().keys();
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const std::string prefix = "optimizer." + names[i] + ".";
    if (fused_) {
      state.add(prefix + "exp_avg", fused_->part(fused_->exp_avg, i));
      state.add(prefix + "exp_avg_sq", fused_->part(fused_->exp_avg_sq, i));
      state.add(prefix + "step", torch::tensor(fused_->updates, torch::kInt64));
      continue;
    }
    auto it = optimizer_->state().find(params_[i].unsafeGetTensorImpl());
    if (it == optimizer_->state().end()) continue;  // no update yet
    auto add_moments = [&](const auto& moments) {
      state.add(prefix + "exp_avg", moments.exp_avg());
      state.add(prefix + "exp_avg_sq", moments.exp_avg_sq());
      if (moments.max_exp_avg_sq().defined()) state.add(prefix + "max_exp_avg_sq", moments.max_exp_avg_sq());
      state.add(prefix + "step", torch::tensor(static_cast<std::int64_t>(moments.step()), torch::kInt64));
    };
    if (const auto* adamw = dynamic_cast<const torch::optim::AdamWParamState*>(it->second.get()))
      add_moments(*adamw);
    else if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(it->second.get()))
      add_moments(*adam);
  }
  for (std::size_t i = 0; i < ema_.size(); ++i) state.add("ema." + names[i], ema_[i]);
  state.add("generator.train", gen_.get_state());
  state.add("generator.global", at::detail::getDefaultCPUGenerator().get_state());
  if (auto device_gen = device_generator(c_.context.device))
    state.add("generator.device", device_gen->get_state());
  for (const auto& [name, tensor] : c_.dataset->state()) state.add("dataset." + name, tensor);
  for (const auto& [name, tensor] : c_.source->state()) state.add("source." + name, tensor);
  if (!rank_states_.empty()) {
    // Data parallel: every rank's streams (gathered by gather_rank_states), under rank<r>.<key>.
    const std::size_t world = rank_states_.begin()->second.size();
    state.add("world_size", torch::tensor(static_cast<std::int64_t>(world), torch::kInt64));
    for (const auto& [key, tensors] : rank_states_)
      for (std::size_t r = 0; r < tensors.size(); ++r)
        state.add(fmt::format("rank{}.{}", r, key), tensors[r]);
  }
}

namespace {

Dataset::State state_of(const std::vector<std::pair<std::string, torch::Tensor>>& named) {
  Dataset::State out;
  for (const auto& [name, tensor] : named) out[name] = tensor;
  return out;
}

// A saved moment must have its parameter's shape; InputError naming the checkpoint otherwise.
const torch::Tensor& moment_like(const NamedState& state, const std::string& name, const torch::Tensor& param,
                                 const std::string& what) {
  const torch::Tensor& value = state.at(name, what);
  if (value.sizes() != param.sizes())
    throw InputError(fmt::format("{}: '{}' is shaped {}; the parameter is {}", what, name,
                                 c10::str(value.sizes()), c10::str(param.sizes())));
  return value;
}

}  // namespace

void Trainer::load_state(const NamedState& state, const std::string& what) {
  step_ = state.at("step", what).item<std::int64_t>();
  skipped_ = state.at("skipped", what).item<std::int64_t>();
  load_named_weights(model_, state.with_prefix("model."), what);
  const auto names = model_.named_parameters().keys();
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const std::string prefix = "optimizer." + names[i] + ".";
    const torch::Tensor* step = state.find(prefix + "step");
    if (!step) {
      if (fused_ && step_ > skipped_) throw InputError(fmt::format("{} lacks '{}step'", what, prefix));
      continue;  // not updated yet
    }
    const torch::Tensor& m = moment_like(state, prefix + "exp_avg", params_[i], what);
    const torch::Tensor& v = moment_like(state, prefix + "exp_avg_sq", params_[i], what);
    const torch::Tensor* vmax = state.find(prefix + "max_exp_avg_sq");
    const std::int64_t count = step->item<std::int64_t>();
    if (fused_) {
      fused_->part(fused_->exp_avg, i).copy_(m);
      fused_->part(fused_->exp_avg_sq, i).copy_(v);
      fused_->updates = count;
      continue;
    }
    auto fill = [&](auto moments) {
      moments->step(count);
      moments->exp_avg(m.to(params_[i].options()).clone());
      moments->exp_avg_sq(v.to(params_[i].options()).clone());
      if (vmax) moments->max_exp_avg_sq(vmax->to(params_[i].options()).clone());
      optimizer_->state()[params_[i].unsafeGetTensorImpl()] = std::move(moments);
    };
    if (dynamic_cast<torch::optim::AdamW*>(optimizer_.get()))
      fill(std::make_unique<torch::optim::AdamWParamState>());
    else
      fill(std::make_unique<torch::optim::AdamParamState>());
  }
  for (std::size_t i = 0; i < ema_.size(); ++i)
    ema_[i].copy_(moment_like(state, "ema." + names[i], params_[i], what));
  gen_.set_state(state.at("generator.train", what));
  at::Generator global = at::detail::getDefaultCPUGenerator();
  global.set_state(state.at("generator.global", what));
  // A GPU run's own generator; a checkpoint written on the CPU has none (the GPU's stays as seeded).
  if (auto device_gen = device_generator(c_.context.device))
    if (const torch::Tensor* saved = state.find("generator.device")) device_gen->set_state(*saved);
  c_.dataset->set_state(state_of(state.with_prefix("dataset.")));
  c_.source->set_state(state_of(state.with_prefix("source.")));

  restore_rank_streams([&](const std::string& key) -> std::optional<torch::Tensor> {
    if (const torch::Tensor* t = state.find(key)) return *t;
    return std::nullopt;
  });
}

// Checkpoints of format 1 (before Pathline 0.2): a LibTorch archive, read with LibTorch's own
// reader, so that runs started then still resume.
void Trainer::load_legacy_state(torch::serialize::InputArchive& archive) {
  torch::Tensor step;
  archive.read("step", step);
  step_ = step.item<std::int64_t>();
  archive.read("skipped", step);
  skipped_ = step.item<std::int64_t>();
  torch::serialize::InputArchive model;
  archive.read("model", model);
  model_.load(model);
  torch::serialize::InputArchive optimizer;
  archive.read("optimizer", optimizer);
  if (fused_)
    fused_->load(optimizer);
  else
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
  // A GPU run's own generator; a checkpoint written on the CPU has none (the GPU's stays as seeded).
  if (auto device_gen = device_generator(c_.context.device);
      device_gen && archive.try_read("generator.device", state))
    device_gen->set_state(state);
  c_.dataset->set_state(read_state(archive, "dataset"));
  c_.source->set_state(read_state(archive, "source"));

  restore_rank_streams([&](const std::string& key) -> std::optional<torch::Tensor> {
    torch::Tensor value;
    if (archive.try_read(key, value)) return value;
    return std::nullopt;
  });
}

// The ranks' own streams: from the checkpoint when it was written by as many ranks; otherwise the
// weights, optimizer, EMA and schedule continue and every rank's stream starts afresh. `saved`
// looks a checkpoint entry up by name (nullopt: absent).
void Trainer::restore_rank_streams(
    const std::function<std::optional<torch::Tensor>(const std::string&)>& saved) {
  const std::int64_t world = dp_ ? dp_->world().world_size : 1;
  const std::optional<torch::Tensor> saved_world = saved("world_size");
  const std::int64_t written_by = saved_world ? saved_world->item<std::int64_t>() : 1;
  world_mismatch_ = 0;
  if (written_by != world) {
    world_mismatch_ = written_by;
    gen_ = make_generator(seed_ + 7919 * static_cast<std::uint64_t>(step_), Stream::train,
                          dp_ ? static_cast<std::uint64_t>(dp_->world().rank) : 0);
    return;
  }
  if (!dp_ || world <= 1) return;
  const std::string own = fmt::format("rank{}.", dp_->world().rank);
  if (auto t = saved(own + "generator.train")) gen_.set_state(*t);
  if (auto t = saved(own + "generator.global")) {
    at::Generator global = at::detail::getDefaultCPUGenerator();
    global.set_state(*t);
  }
  if (auto device_gen = device_generator(c_.context.device))
    if (auto t = saved(own + "generator.device")) device_gen->set_state(*t);
  for (auto [prefix, dataset] :
       {std::pair<std::string, Dataset*>{"dataset.", c_.dataset.get()}, {"source.", c_.source.get()}}) {
    Dataset::State ranked = dataset->state();
    for (auto& [name, tensor] : ranked)
      if (auto mine = saved(own + prefix + name)) tensor = *mine;
    dataset->set_state(ranked);
  }
}

}  // namespace pathline
