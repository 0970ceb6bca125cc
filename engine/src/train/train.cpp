#include "pathline/engine/train.hpp"

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
#include "fused_kernels.hpp"
#include "pathline/engine/checkpoint.hpp"
#include "pathline/engine/distributed.hpp"
#include "pathline/engine/io.hpp"
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
    : base(train.real("lr")), warmup(train.integer("warmup_steps")), steps(train.integer("steps")) {
  const std::string& name = train.string("lr_schedule");
  shape = name == "cosine" ? Shape::cosine : name == "linear" ? Shape::linear : Shape::constant;
}

double LearningRateSchedule::at(std::int64_t step) const {
  if (warmup > 0 && step < warmup) return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (shape != Shape::constant && steps > warmup) {
    double progress = static_cast<double>(step - warmup) / static_cast<double>(steps - warmup);
    if (shape == Shape::cosine) return base * 0.5 * (1.0 + std::cos(kPi * progress));
    return base * (1.0 - progress);
  }
  return base;
}

NonFiniteError::NonFiniteError(std::int64_t step, std::string quantity, double value)
    : Error(fmt::format("training stopped at step {}: the {} is {} (train.on_nonfinite = \"stop\")", step,
                        quantity, std::isnan(value) ? std::string("nan") : fmt::format("{}", value))),
      step(step),
      quantity(std::move(quantity)),
      value(value) {}

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

namespace {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Params& tp,
                                                        const std::vector<torch::Tensor>& params) {
  const auto& betas = tp.real_list("betas");
  const double lr = tp.real("lr"), eps = tp.real("eps"), decay = tp.real("weight_decay");
  if (tp.string("optimizer") == "adam")
    return std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(lr).betas({betas[0], betas[1]}).eps(eps).weight_decay(decay));
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(lr).betas({betas[0], betas[1]}).eps(eps).weight_decay(decay));
}

}  // namespace

// Adam and AdamW over every parameter in one pass, with the EMA in the same pass, instead of
// LibTorch's optimizer: that one runs about eight tensor operations per parameter tensor (and
// allocates a denominator for each), which on small models costs more than the arithmetic. The
// moments and the EMA live in flat buffers (one allocation each); the parameters and gradients stay
// the model's own tensors. The chunks below split the parameters into pieces of at most kChunk
// elements that the intra-op threads share.
class FusedAdam {
 public:
  // Whether the fused update applies: float32, contiguous CPU parameters that all require gradients.
  static bool applies(const std::vector<torch::Tensor>& params) {
    if (params.empty()) return false;
    for (const auto& p : params)
      if (!p.device().is_cpu() || p.scalar_type() != torch::kFloat32 || !p.is_contiguous() ||
          !p.requires_grad())
        return false;
    return true;
  }

  FusedAdam(const std::vector<torch::Tensor>& params, const Params& tp, bool decoupled, bool ema)
      : params_(params), decoupled_(decoupled) {
    const auto& betas = tp.real_list("betas");
    beta1_ = betas[0], beta2_ = betas[1], eps_ = tp.real("eps"), weight_decay_ = tp.real("weight_decay");
    std::int64_t total = 0;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const std::int64_t n = params_[i].numel();
      for (std::int64_t begin = 0; begin < n; begin += kChunk)
        chunks_.push_back({i, begin, std::min(n, begin + kChunk), total + begin});
      offsets_.push_back(total);
      total += n;
    }
    exp_avg = torch::zeros({total});
    exp_avg_sq = torch::zeros({total});
    if (ema) {
      torch::NoGradGuard no_grad;
      ema_flat = torch::empty({total});
      for (std::size_t i = 0; i < params_.size(); ++i) {
        torch::Tensor view = ema_flat.narrow(0, offsets_[i], params_[i].numel()).view(params_[i].sizes());
        view.copy_(params_[i]);
        ema_views.push_back(view);
      }
    }
  }

  // The gradients as float32 contiguous tensors (undefined where a parameter got none this step).
  void gather_gradients() {
    grads_.assign(params_.size(), torch::Tensor());
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const torch::Tensor& g = params_[i].grad();
      if (g.defined())
        grads_[i] = g.scalar_type() == torch::kFloat32 ? g.contiguous() : g.to(torch::kFloat32).contiguous();
    }
  }

  // The squared global norm of the gathered gradients (in double).
  double grad_square_sum() const {
    std::vector<double> parts(chunks_.size(), 0.0);
    at::parallel_for(
        0, static_cast<std::int64_t>(chunks_.size()), 1, [&](std::int64_t first, std::int64_t last) {
          for (std::int64_t c = first; c < last; ++c) {
            const Chunk& chunk = chunks_[c];
            const torch::Tensor& g = grads_[chunk.param];
            if (g.defined())
              parts[c] = kernels::square_sum(g.data_ptr<float>() + chunk.begin, chunk.end - chunk.begin);
          }
        });
    double total = 0.0;
    for (double part : parts) total += part;
    return total;
  }

  // One update with learning rate `lr`, the gradients scaled by `grad_scale` (clipping), and the
  // EMA moved by `ema_weight` = 1 - decay towards the new weights. Parameters without a gradient
  // are left alone, as LibTorch's optimizers leave them.
  void step(double lr, double grad_scale, double ema_weight) {
    ++updates;
    const double bc1 = 1.0 - std::pow(beta1_, static_cast<double>(updates));
    const double bc2 = 1.0 - std::pow(beta2_, static_cast<double>(updates));
    kernels::AdamScalars s{};
    s.beta1 = static_cast<float>(beta1_);
    s.beta2 = static_cast<float>(beta2_);
    s.eps = static_cast<float>(eps_);
    s.step_size = static_cast<float>(lr / bc1);
    s.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    s.decay = static_cast<float>(decoupled_ ? 1.0 - lr * weight_decay_ : 1.0);
    s.l2 = static_cast<float>(decoupled_ ? 0.0 : weight_decay_);
    s.grad_scale = static_cast<float>(grad_scale);
    s.ema_weight = static_cast<float>(ema_weight);
    float* m = exp_avg.data_ptr<float>();
    float* v = exp_avg_sq.data_ptr<float>();
    float* ema = ema_flat.defined() ? ema_flat.data_ptr<float>() : nullptr;
    torch::NoGradGuard no_grad;
    at::parallel_for(0, static_cast<std::int64_t>(chunks_.size()), 1,
                     [&](std::int64_t first, std::int64_t last) {
                       for (std::int64_t c = first; c < last; ++c) {
                         const Chunk& chunk = chunks_[c];
                         const torch::Tensor& g = grads_[chunk.param];
                         if (!g.defined()) continue;
                         const std::int64_t at = chunk.offset;
                         kernels::adam_update(params_[chunk.param].data_ptr<float>() + chunk.begin,
                                              g.data_ptr<float>() + chunk.begin, m + at, v + at,
                                              ema ? ema + at : nullptr, chunk.end - chunk.begin, s);
                       }
                     });
    grads_.clear();
  }

  // A format-1 checkpoint's moments (Trainer::load_legacy_state).
  void load(torch::serialize::InputArchive& archive) {
    torch::Tensor count;
    archive.read("updates", count);
    updates = count.item<std::int64_t>();
    for (const auto& [key, target] :
         {std::pair<const char*, torch::Tensor*>{"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}}) {
      torch::Tensor value;  // a fresh one: reading into a defined tensor re-points its storage
      archive.read(key, value);
      if (value.sizes() != target->sizes())
        throw InputError(fmt::format("optimizer state {} holds {} values; the model has {} parameters", key,
                                     value.numel(), target->numel()));
      target->copy_(value);
    }
  }

  // Parameter i's part of a flat buffer (exp_avg or exp_avg_sq), shaped like the parameter.
  torch::Tensor part(const torch::Tensor& flat, std::size_t i) const {
    return flat.narrow(0, offsets_[i], params_[i].numel()).view(params_[i].sizes());
  }

  torch::Tensor exp_avg, exp_avg_sq, ema_flat;  // flat, in the order of the parameters
  std::vector<torch::Tensor> ema_views;         // ema_flat viewed as each parameter
  std::int64_t updates = 0;                     // the bias corrections' step count

 private:
  static constexpr std::int64_t kChunk = 1 << 15;
  struct Chunk {
    std::size_t param;
    std::int64_t begin, end, offset;  // [begin, end) of the parameter; offset of begin in the flat buffers
  };
  std::vector<torch::Tensor> params_, grads_;
  std::vector<std::int64_t> offsets_;
  std::vector<Chunk> chunks_;
  bool decoupled_;
  double beta1_ = 0.9, beta2_ = 0.999, eps_ = 1e-8, weight_decay_ = 0.0;
};

namespace {

// A testing aid: PATHLINE_FAULT=kill-in-step:N makes the process SIGKILL itself in the middle of
// step N (after the backward pass, before the update), as a machine failure would.
std::int64_t fault_step() {
  const char* fault = std::getenv("PATHLINE_FAULT");
  const std::string prefix = "kill-in-step:";
  if (!fault || std::string(fault).rfind(prefix, 0) != 0) return -1;
  return std::atoll(fault + prefix.size());
}

}  // namespace

Trainer::Trainer(const PipelineConfig& config, Components& components, std::uint64_t rank)
    : c_(components),
      model_(*components.model),
      params_(components.model->parameters()),
      gen_(make_generator(static_cast<std::uint64_t>(config.table("run").integer("seed")), Stream::train,
                          rank)),
      schedule_(config.table("train")),
      batch_(config.table("train").integer("batch_size")),
      rank_(static_cast<std::int64_t>(components.flow().shape.size()) + 1),
      accumulate_(config.table("train").integer("accumulate")),
      grad_clip_(config.table("train").real("grad_clip")),
      ema_decay_(config.table("train").real("ema_decay")),
      label_dropout_(config.table("train").real("label_dropout")),
      affine_path_(components.path->affine()),
      ema_warmup_(config.table("train").boolean("ema_warmup")),
      bf16_(wants_bf16(config.table("train").string("precision"))),
      skip_nonfinite_(config.table("train").string("on_nonfinite") == "skip"),
      fault_step_(fault_step()) {
  const Params& tp = config.table("train");
  local_batch_ = batch_;
  seed_ = static_cast<std::uint64_t>(config.table("run").integer("seed"));
  std::string weighting = tp.string("loss_weighting");
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
  if (tp.boolean("fused_optimizer") && FusedAdam::applies(params_)) {
    fused_ = std::make_unique<FusedAdam>(params_, tp, tp.string("optimizer") == "adamw", ema_decay_ > 0);
    ema_ = fused_->ema_views;
  } else {
    optimizer_ = make_optimizer(tp, params_);
    if (ema_decay_ > 0) {
      torch::NoGradGuard no_grad;
      for (const auto& p : params_) ema_.push_back(p.detach().clone());
    }
  }
  model_.train();
}

Trainer::~Trainer() {
  // The gradient hooks of attach() point at this trainer: the model outlives it.
  for (std::size_t i = 0; i < hooks_.size(); ++i) params_[i].remove_hook(hooks_[i]);
}

Trainer::Draw Trainer::draw(at::Generator& gen, std::int64_t n) {
  const torch::Device device = c_.context.device;
  Batch target =
      plugin_call(c_.origin("dataset"), "drawing a batch", [&] { return c_.dataset->sample(n, gen); });
  Batch source =
      plugin_call(c_.origin("source"), "drawing a batch", [&] { return c_.source->sample(n, gen); });
  target.x = to_device(target.x, device);
  source.x = to_device(source.x, device);
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

void Trainer::on_gradient(std::size_t param, const torch::Tensor& grad) {
  // Called by autograd with a parameter's gradient as the backward pass produces it (before it is
  // added into .grad): copied (or, over micro-batches, added) into the parameter's slot of the flat
  // buffer; when the last micro-batch completes a bucket, its all-reduce starts while the backward
  // pass goes on with the layers before.
  if (!collecting_) return;
  torch::NoGradGuard no_grad;
  Slot& slot = slots_[param];
  torch::Tensor target = dp_flat_.narrow(0, slot.offset, grad.numel());
  if (!slot.written)
    target.copy_(grad.reshape({-1}));
  else
    target.add_(grad.reshape({-1}));
  slot.written = true;
  if (last_micro_ && !slot.counted) {
    slot.counted = true;
    Bucket& bucket = buckets_[slot.bucket];
    if (--bucket.pending == 0) {
      bucket.launched = true;
      dp_->start_sum(dp_flat_.narrow(0, bucket.begin, bucket.size));
    }
  }
}

torch::Tensor Trainer::average_over_ranks(const torch::Tensor& loss) {
  // The buckets the backward pass did not complete (parameters without a gradient this step: zeros),
  // the loss and the stop flag; then the mean of everything, unpacked into the gradients.
  torch::NoGradGuard no_grad;
  collecting_ = false;
  for (std::size_t i = 0; i < slots_.size(); ++i)
    if (!slots_[i].written) dp_flat_.narrow(0, slots_[i].offset, params_[i].numel()).zero_();
  for (Bucket& bucket : buckets_)
    if (!bucket.launched) dp_->start_sum(dp_flat_.narrow(0, bucket.begin, bucket.size));
  dp_scalars_[0] = loss.to(torch::kFloat32);
  dp_scalars_[1] = stop_requested_ ? 1.0f : 0.0f;
  dp_->start_sum(dp_scalars_);
  dp_->finish_sums();
  const double world = static_cast<double>(dp_->world().world_size);
  dp_flat_.div_(world);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    torch::Tensor slot = dp_flat_.narrow(0, slots_[i].offset, p.numel()).view(p.sizes());
    if (p.grad().defined())
      p.mutable_grad().copy_(slot);
    else
      p.mutable_grad() = slot.clone();
  }
  stop_agreed_ = dp_scalars_[1].item<float>() > 0.0f;
  return (dp_scalars_[0] / world).to(loss.scalar_type());
}

void Trainer::start_collecting() {
  collecting_ = true;
  for (Slot& slot : slots_) slot.written = slot.counted = false;
  for (Bucket& bucket : buckets_) bucket.pending = bucket.params, bucket.launched = false;
}

void Trainer::attach(DataParallel& group) {
  dp_ = &group;
  const std::int64_t world = group.world().world_size, rank = group.world().rank;
  local_batch_ = batch_ / world + (rank < batch_ % world ? 1 : 0);
  if (local_batch_ < 1)
    throw InputError(fmt::format("train.batch_size = {} is fewer samples than the {} ranks", batch_, world));
  if (accumulate_ > local_batch_)
    throw InputError(
        fmt::format("train.accumulate = {} is more micro-batches than this rank's {} of "
                    "train.batch_size = {} samples",
                    accumulate_, local_batch_, batch_));
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> values;
  for (const auto& p : params_) values.push_back(p.detach());
  group.broadcast(values);  // every rank starts from rank 0's initial weights
  for (std::size_t i = 0; i < ema_.size(); ++i) ema_[i].copy_(params_[i]);

  // The flat buffer in the reverse order of the parameters (the order in which the backward pass
  // produces their gradients), cut into buckets of at most kBucket values.
  constexpr std::int64_t kBucket = 1 << 20;  // 4 MB of float32
  slots_.assign(params_.size(), Slot{});
  std::int64_t offset = 0;
  for (std::size_t k = params_.size(); k-- > 0;) {
    const std::int64_t n = params_[k].numel();
    if (buckets_.empty() || (buckets_.back().size > 0 && buckets_.back().size + n > kBucket))
      buckets_.push_back(Bucket{offset, 0, 0, 0, false});
    slots_[k].offset = offset;
    slots_[k].bucket = buckets_.size() - 1;
    buckets_.back().size += n;
    ++buckets_.back().params;
    offset += n;
  }
  dp_flat_ = torch::zeros({offset}, torch::TensorOptions().device(c_.context.device));
  dp_scalars_ = torch::zeros({2}, torch::TensorOptions().device(c_.context.device));
  for (std::size_t i = 0; i < params_.size(); ++i)
    hooks_.push_back(
        params_[i].register_hook([this, i](const torch::Tensor& grad) { on_gradient(i, grad); }));
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
  const std::int64_t batch = t.size(0);

  for (auto& p : params_) p.mutable_grad().reset();  // set_to_none: no zero-fill kernels
  // The whole batch is drawn at once (so that couplings see all of it and the draws do not depend
  // on `accumulate`); the model sees it in `accumulate` micro-batches whose gradients add up.
  torch::Tensor total;
  if (dp_) start_collecting();
  for (std::int64_t k = 0, begin = 0; k < accumulate_; ++k) {
    last_micro_ = k + 1 == accumulate_;
    const std::int64_t size = batch / accumulate_ + (k < batch % accumulate_ ? 1 : 0);
    // This micro-batch's rows of the batch (every tensor of the draw is sliced the same way).
    const std::int64_t first = begin;
    begin += size;
    auto part = [&](const torch::Tensor& x) { return accumulate_ == 1 ? x : x.narrow(0, first, size); };
    torch::Tensor t_k = part(t), x0 = part(all.x0), x1 = part(all.x1), x_t = part(all.at.x_t);
    Condition condition;
    if (labels.defined()) condition.labels = part(labels);
    for (const auto& [name, tensor] : all.extras) condition.extras[name] = part(tensor);
    PathCoefficients coef = plugin_call(c_.origin("path"), "coefficients",
                                        [&] { return c_.path->coefficients(t_k).broadcast_to_rank(rank_); });
    // An affine path's targets come from the parameterization; any other path's draw carries its
    // velocity target (its pipelines predict the velocity: build_components checks).
    torch::Tensor goal = affine_path_ ? plugin_call(c_.origin("parameterization"), "target",
                                                    [&] { return c_.parameterization->target(x0, x1, coef); })
                                      : part(all.at.velocity);
    torch::Tensor output;
    {
      AutocastGuard autocast(bf16_, device);
      output =
          plugin_call(c_.origin("model"), "forward", [&] { return model_.forward(x_t, t_k, condition); });
    }
    if (output.scalar_type() != goal.scalar_type()) output = output.to(goal.scalar_type());
    torch::Tensor weight = weighting_(coef, t_k);
    torch::Tensor loss =
        weight.defined() ? (weight * (output - goal).square()).mean() : torch::mse_loss(output, goal);
    // The share of the (global) batch these samples are: the mean over ranks of the ranks' losses is
    // then the mean over the whole batch, also when the shares differ by one.
    const double share =
        static_cast<double>(size) / static_cast<double>(batch) *
        (dp_ ? static_cast<double>(batch * dp_->world().world_size) / static_cast<double>(batch_) : 1.0);
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

  // The ranks' own streams: from the checkpoint when it was written by as many ranks; otherwise the
  // weights, optimizer, EMA and schedule continue and every rank's stream starts afresh.
  const std::int64_t world = dp_ ? dp_->world().world_size : 1;
  const torch::Tensor* saved_world = state.find("world_size");
  const std::int64_t written_by = saved_world ? saved_world->item<std::int64_t>() : 1;
  world_mismatch_ = 0;
  if (written_by != world) {
    world_mismatch_ = written_by;
    gen_ = make_generator(seed_ + 7919 * static_cast<std::uint64_t>(step_), Stream::train,
                          dp_ ? static_cast<std::uint64_t>(dp_->world().rank) : 0);
  } else if (dp_ && world > 1) {
    const std::string own = fmt::format("rank{}.", dp_->world().rank);
    if (const torch::Tensor* t = state.find(own + "generator.train")) gen_.set_state(*t);
    if (const torch::Tensor* t = state.find(own + "generator.global")) global.set_state(*t);
    if (auto device_gen = device_generator(c_.context.device))
      if (const torch::Tensor* t = state.find(own + "generator.device")) device_gen->set_state(*t);
    for (auto [prefix, dataset] :
         {std::pair<std::string, Dataset*>{"dataset.", c_.dataset.get()}, {"source.", c_.source.get()}}) {
      Dataset::State ranked = dataset->state();
      for (auto& [name, tensor] : ranked)
        if (const torch::Tensor* mine = state.find(own + prefix + name)) tensor = *mine;
      dataset->set_state(ranked);
    }
  }
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

  // The ranks' own streams: from the checkpoint when it was written by as many ranks; otherwise the
  // weights, optimizer, EMA and schedule continue and every rank's stream starts afresh.
  const std::int64_t world = dp_ ? dp_->world().world_size : 1;
  torch::Tensor saved;
  const std::int64_t saved_world = archive.try_read("world_size", saved) ? saved.item<std::int64_t>() : 1;
  world_mismatch_ = 0;
  if (saved_world != world) {
    world_mismatch_ = saved_world;
    gen_ = make_generator(seed_ + 7919 * static_cast<std::uint64_t>(step_), Stream::train,
                          dp_ ? static_cast<std::uint64_t>(dp_->world().rank) : 0);
  } else if (dp_ && world > 1) {
    const std::string own = fmt::format("rank{}.", dp_->world().rank);
    torch::Tensor value;
    if (archive.try_read(own + "generator.train", value)) gen_.set_state(value);
    torch::Tensor global_state;
    if (archive.try_read(own + "generator.global", global_state)) {
      at::Generator global = at::detail::getDefaultCPUGenerator();
      global.set_state(global_state);
    }
    if (auto device_gen = device_generator(c_.context.device);
        device_gen && archive.try_read(own + "generator.device", global_state))
      device_gen->set_state(global_state);
    for (auto [prefix, dataset] :
         {std::pair<std::string, Dataset*>{"dataset.", c_.dataset.get()}, {"source.", c_.source.get()}}) {
      Dataset::State ranked = dataset->state();
      for (auto& [name, tensor] : ranked) {
        torch::Tensor mine;
        if (archive.try_read(own + prefix + name, mine)) tensor = mine;
      }
      dataset->set_state(ranked);
    }
  }
}

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
  const Params& tp = config.table("train");
  TrainResult result;
  const std::int64_t steps = tp.integer("steps");
  if (!c.model->trainable() || steps == 0) {
    if (log)
      log(c.model->trainable() ? "train: steps = 0, nothing to train"
                               : "train: the model has nothing to learn; skipping training");
    return result;
  }
  const std::int64_t log_every = tp.integer("log_every"), checkpoint_every = tp.integer("checkpoint_every");
  const std::int64_t progress_every =
      tp.integer("progress_every") > 0 ? tp.integer("progress_every") : 5 * log_every;
  DataParallel* dp = options.data_parallel;
  Trainer trainer(config, c, dp ? static_cast<std::uint64_t>(dp->world().rank) : 0);
  if (dp) trainer.attach(*dp);
  const LearningRateSchedule schedule(tp);
  const auto keys = training_keys(config);
  const bool saving = !run_dir.empty();
  CheckpointStore store(run_dir, tp.integer("keep_checkpoints"));

  LoopState loop;
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
  for (std::int64_t step = first; step < steps; ++step) {
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
        const std::string row = fmt::format("{},{:.8g},{:.6g},{:.3f}\n", step + 1, mean, schedule.at(step),
                                            loop.elapsed + elapsed);
        loop.csv += row;
        if (csv.is_open())
          csv << row << std::flush;  // a row is there to be watched (tail -f) while the run goes on
      }
      loop.window_sum = 0.0;
      loop.window_n = 0;
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
    const bool due = (checkpoint_every > 0 && (step + 1) % checkpoint_every == 0) || step + 1 == steps;
    // Data parallel: the ranks stop together, after the step in which any of them was signalled.
    const bool stop = options.handle_signals && (dp ? trainer.stop_agreed() : g_stop_signal != 0);
    if (due || stop) {
      loop.elapsed += elapsed;
      const double offset = elapsed;
      save_checkpoint();
      loop.elapsed -= offset;  // elapsed keeps counting from `start`
    }
    if (stop) {
      const int signal = g_stop_signal != 0 ? static_cast<int>(g_stop_signal) : SIGTERM;
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
  }
  const double seconds = seconds_since(start);
  const std::int64_t done = steps - first;
  result.steps = steps;
  result.skipped = trainer.skipped_steps();
  result.losses = loop.losses;
  result.logged = loop.logged;
  result.final_loss = loop.losses.empty() ? std::nan("") : loop.losses.back();
  result.seconds = seconds;
  result.samples_per_second = done > 0 ? static_cast<double>(done * tp.integer("batch_size")) / seconds : 0.0;
  // A training step costs about three forward passes (forward, and backward's two products).
  if (double macs = c.model->macs_per_sample(); macs > 0)
    result.gflops = 3.0 * 2.0 * macs * result.samples_per_second / 1e9;
  if (log && dp && done > 0)
    log(
        fmt::format("train: data parallel over {} ranks, batch {} per rank; all-reduce {:.2f} ms per step "
                    "(not hidden behind the backward pass)",
                    dp->world().world_size, tp.integer("batch_size") / dp->world().world_size,
                    1e3 * dp->seconds() / static_cast<double>(done)));
  if (log && done > 0)
    log(fmt::format(
        "train: {} steps in {:.1f}s, {:.1f} samples/s{}{}", done, result.seconds, result.samples_per_second,
        result.gflops > 0 ? fmt::format(", {:.1f} GFLOP/s (3 x 2 x MACs per sample)", result.gflops)
                          : std::string(),
        result.skipped > 0 ? fmt::format(", {} non-finite batches skipped", result.skipped) : std::string()));
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
