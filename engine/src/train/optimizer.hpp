// The optimizer side of training (internal to the engine): LibTorch's Adam/AdamW, and the fused
// Adam/AdamW + EMA update over every parameter at once.
#pragma once

#include <fmt/format.h>
#include <torch/torch.h>

#include <memory>
#include <vector>

#include "fused_kernels.hpp"
#include "pathline/engine/settings.hpp"

namespace pathline {

// LibTorch's Adam or AdamW ([train] optimizer) over `params`, with [train]'s rate, betas, eps and
// weight decay.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainSettings& tp,
                                                        const std::vector<torch::Tensor>& params);

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

  FusedAdam(const std::vector<torch::Tensor>& params, const TrainSettings& tp, bool decoupled, bool ema)
      : params_(params), decoupled_(decoupled) {
    beta1_ = tp.betas[0], beta2_ = tp.betas[1], eps_ = tp.eps, weight_decay_ = tp.weight_decay;
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

}  // namespace pathline
