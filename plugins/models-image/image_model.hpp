// What the two image models of plugin "models-image" share: the sinusoidal time features, the
// attention's batched products and softmax (faster than LibTorch 1.13's on CPU where it matters),
// the checked class-embedding rows, the shape checks and the registration functions.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include <cstdint>
#include <string>

#include "pathline/plugin.hpp"

namespace pathline::models_image {

void register_unet(Registrar& registrar);
void register_dit(Registrar& registrar);

// Sinusoidal features of t, sin(w_k t) and cos(w_k t), with angular frequencies w_k geometric from 1
// to 1000 (Vaswani et al. 2017, as used for diffusion time by Ho et al. 2020; the same as the mlp
// model's). cos is sin(. + pi/2), so the features are one addcmul and one sin. Owns two buffers of
// the module it is attached to, so they follow the module to another device or dtype.
class TimeFeatures {
 public:
  TimeFeatures() = default;
  TimeFeatures(torch::nn::Module& owner, std::int64_t features) {
    constexpr double kPi = 3.14159265358979323846;
    const std::int64_t half = features / 2;
    auto w = half == 1 ? torch::ones({1}) : torch::logspace(0.0, 3.0, half);
    freqs_ = owner.register_buffer("time_freqs", torch::cat({w, w}).unsqueeze(0));
    phase_ = owner.register_buffer(
        "time_phase", torch::cat({torch::zeros({half}), torch::full({half}, kPi / 2)}).unsqueeze(0));
  }
  // t: [B] (or one time for the whole batch) -> [batch, features].
  torch::Tensor operator()(const torch::Tensor& t, std::int64_t batch) const {
    auto features = torch::addcmul(phase_, t.to(freqs_.options()).reshape({-1, 1}), freqs_).sin_();
    return features.size(0) == batch ? features : features.expand({batch, -1}).contiguous();
  }

 private:
  torch::Tensor freqs_;  // [1, F]: w_1..w_{F/2} twice
  torch::Tensor phase_;  // [1, F]: F/2 zeros, then F/2 times pi/2
};

namespace detail {

// a[i] @ b[i] for every i, the batch split into one contiguous chunk per thread. LibTorch 1.13's
// float bmm loops over the batch on one thread and hands each small product to the BLAS, which
// either runs it on one core (the U-Net's 49 x 16 x 49) or wakes every thread for a few
// microseconds of work (the DiT's 196 x 32 x 196), hundreds of times per call; here each thread
// runs its share of the batch, and the BLAS, called inside a parallel region, stays on its thread.
inline torch::Tensor parallel_bmm(const torch::Tensor& a, const torch::Tensor& b) {
  // Detached: the worker threads do not share the caller's autograd state, and nothing here is
  // recorded anyway (BatchedProduct is the graph's node).
  const auto a0 = a.detach(), b0 = b.detach();
  auto out = torch::empty({a0.size(0), a0.size(1), b0.size(2)}, a0.options());
  at::parallel_for(0, a0.size(0), 1, [&](std::int64_t begin, std::int64_t end) {
    auto chunk = out.narrow(0, begin, end - begin);
    at::bmm_out(chunk, a0.narrow(0, begin, end - begin), b0.narrow(0, begin, end - begin));
  });
  return out;
}

struct BatchedProduct : torch::autograd::Function<BatchedProduct> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a,
                               const torch::Tensor& b) {
    ctx->save_for_backward({a, b});
    return parallel_bmm(a, b);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& a = saved[0];
    const torch::Tensor& b = saved[1];
    torch::Tensor grad_a, grad_b;
    if (ctx->needs_input_grad(0)) grad_a = parallel_bmm(grads[0], b.transpose(1, 2));
    if (ctx->needs_input_grad(1)) grad_b = parallel_bmm(a.transpose(1, 2), grads[0]);
    return {grad_a, grad_b};
  }
};

// softmax over the last dimension whose backward, for bfloat16 (and half), is three plain passes:
// LibTorch 1.13's bfloat16 CPU softmax backward took longer than the DiT's attention products
// around it. The forward is LibTorch's (fast in bfloat16 too).
struct ReducedSoftmax : torch::autograd::Function<ReducedSoftmax> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x) {
    auto p = at::_softmax(x, -1, false);
    ctx->save_for_backward({p});
    return p;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // d p_i / d x_j = p_i (delta_ij - p_j): grad_x = g p - p sum(g p), the sum accumulated in float.
    const torch::Tensor p = ctx->get_saved_variables()[0];
    auto gp = grads[0] * p;
    auto sum = gp.sum(-1, /*keepdim=*/true, torch::kFloat).to(gp.scalar_type());
    return {gp.addcmul_(p, sum, -1)};
  }
};

}  // namespace detail

// a @ b for batches of matrices, a [n, m, k] and b [n, k, p] (any strides): attention's two
// products. In float32 without autocast, through detail::parallel_bmm, forward and backward; under
// autocast (bfloat16 goes to oneDNN's batched matmul, which threads well) or on a GPU, plain bmm.
inline torch::Tensor batched_product(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.is_cpu() && !at::autocast::is_cpu_enabled() && at::get_num_threads() > 1 &&
      a.scalar_type() == b.scalar_type() && a.size(0) > 1)
    return detail::BatchedProduct::apply(a, b);
  return torch::bmm(a, b);
}

// softmax(x, -1), for attention weights; reduced precision (under autocast) through ReducedSoftmax.
inline torch::Tensor attention_softmax(const torch::Tensor& x) {
  if (x.is_cpu() && (x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kHalf))
    return detail::ReducedSoftmax::apply(x);
  return x.softmax(-1);
}

// The embedding rows of the batch's labels, checked: a label outside 0 .. num_classes - 1 (other
// than the null label) is a caller's mistake, and the lookup would fail without saying why. The
// null label and undefined labels give the last row, num_classes (pathline::embedding_index).
inline torch::Tensor class_rows(const std::string& model, const Condition& condition, std::int64_t batch,
                                std::int64_t num_classes, const torch::Device& device) {
  const torch::Tensor& labels = condition.labels;
  if (labels.defined() && (labels.dim() != 1 || labels.size(0) != batch))
    throw Error(model + ": the condition holds " + std::to_string(labels.numel()) +
                " labels for a batch of " + std::to_string(batch) + " samples");
  if (labels.defined() && batch > 0) {
    const std::int64_t largest = labels.max().item<std::int64_t>();
    if (largest >= num_classes)
      throw Error(model + ": a label is " + std::to_string(largest) + "; the data has classes 0 to " +
                  std::to_string(num_classes - 1) + " (and the null label " + std::to_string(kNullLabel) +
                  ")");
  }
  return embedding_index(condition, batch, num_classes, device);
}

// Both models take images [C, H, W]; anything else is a configuration mistake worth one clear line.
inline void require_image(const std::string& model, const DataInfo& data) {
  if (data.shape.empty())
    throw InputError(model + ": the data shape is unknown (the model is built after the [dataset])");
  if (!data.is_image()) {
    std::string shape;
    for (auto d : data.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    throw InputError(model + ": needs images shaped [channels, height, width]; the data's samples are [" +
                     shape + "] (use the mlp model for vectors)");
  }
}

// x's expected shape: [B, C, H, W] with the data's C, H, W.
inline void require_batch_shape(const std::string& model, const torch::Tensor& x, const DataInfo& data) {
  if (x.dim() != 4 || x.size(1) != data.channels() || x.size(2) != data.height() || x.size(3) != data.width())
    throw Error(model + ": expected a batch shaped [B, " + std::to_string(data.channels()) + ", " +
                std::to_string(data.height()) + ", " + std::to_string(data.width()) + "], got " +
                c10::str(x.sizes()));
}

}  // namespace pathline::models_image
