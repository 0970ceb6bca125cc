// What the two image models of plugin "models-image" share: the sinusoidal time features, the
// attention and the GELU, the checked class-embedding rows, the shape checks and the registration
// functions.
#pragma once

#include <cmath>
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

// Multi-head attention softmax(q k^T / sqrt(d)) v over the tokens, q, k and v [B, heads, T, d].
// On a GPU, and in float32, LibTorch's fused scaled_dot_product_attention (flash attention, which
// never stores the [T, T] weights). In bfloat16 on the CPU the fused kernel's backward pass is
// several times slower than the products it replaces (LibTorch 2.15: 41 ms against 10 ms in float32
// for the DiT's 49-token blocks, batch 128), so there the weights are formed explicitly: two batched
// bfloat16 products through oneDNN and a softmax computed in float32, as the fused kernel does.
// `explicit_weights` forms them in every case: a model trained on intervals differentiates its
// forward pass in forward mode (interval_derivative), which the fused kernel does not support.
inline torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               bool explicit_weights = false) {
  if (!explicit_weights && (!q.is_cpu() || q.scalar_type() != torch::kBFloat16))
    return at::scaled_dot_product_attention(q, k, v);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  torch::Tensor scores = torch::matmul(q * scale, k.transpose(-2, -1));  // [B, heads, T, T]
  // Float32 softmax for bfloat16 products; float32 and float64 keep their own precision.
  if (scores.scalar_type() == torch::kFloat || scores.scalar_type() == torch::kDouble)
    return torch::matmul(torch::softmax(scores, -1), v);
  return torch::matmul(torch::softmax(scores, -1, torch::kFloat).to(v.scalar_type()), v);
}

// GELU with the tanh approximation (Hendrycks & Gimpel 2016), DiT's MLP activation:
// 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
inline torch::Tensor tanh_gelu(const torch::Tensor& x) { return torch::gelu(x, "tanh"); }

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
