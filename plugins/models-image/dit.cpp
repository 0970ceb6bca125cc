// Model `dit`: a diffusion transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
// Transformers") in its adaLN-Zero form. The image is cut into p x p patches, each a token; tokens
// get a fixed 2D sin-cos position (He et al. 2022, MAE); each block's layer norms have no affine of
// their own but a shift and scale computed from c = embedding(t) + embedding(class), and each
// residual branch a gate, all from a zero-initialised Linear, so every block starts as the identity;
// the final projection is zero too, so a fresh DiT outputs exactly zero.
#include <cmath>
#include <string>
#include <vector>

#include "image_model.hpp"

namespace pathline::models_image {
namespace {

using torch::nn::Linear;

constexpr double kLayerNormEps = 1e-6;  // DiT's

template <class Layer>
Layer zeroed(Layer layer) {
  torch::NoGradGuard no_grad;
  layer->weight.zero_();
  layer->bias.zero_();
  return layer;
}

// DiT's initialisation of the transformer's linear layers: Xavier-uniform weights, zero biases.
Linear xavier(Linear layer) {
  torch::NoGradGuard no_grad;
  torch::nn::init::xavier_uniform_(layer->weight);
  layer->bias.zero_();
  return layer;
}

// The fixed 2D sin-cos position of each token, [1, rows * cols, hidden], tokens in row-major order:
// the first half of the features encode the row, the second the column, each as sin then cos of
// position * 10000^(-i / (hidden / 4)), i = 0 .. hidden / 4 - 1.
torch::Tensor sincos_positions(std::int64_t hidden, std::int64_t rows, std::int64_t cols) {
  const std::int64_t quarter = hidden / 4;
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto omega = torch::pow(10000.0, -torch::arange(quarter, opts) / static_cast<double>(quarter));
  auto r = torch::arange(rows, opts).repeat_interleave(cols).unsqueeze(1) * omega;
  auto c = torch::arange(cols, opts).repeat({rows}).unsqueeze(1) * omega;
  return torch::cat({r.sin(), r.cos(), c.sin(), c.cos()}, 1).to(torch::kFloat32).unsqueeze(0);
}

// x * (1 + scale) + shift in one kernel; scale and shift are [B, 1, D], broadcast over the tokens.
torch::Tensor modulate(const torch::Tensor& x, const torch::Tensor& shift, const torch::Tensor& scale) {
  return torch::addcmul(shift, x, scale + 1);
}

torch::Tensor layer_norm(const torch::Tensor& x) {
  return torch::layer_norm(x, {x.size(-1)}, {}, {}, kLayerNormEps);
}

// x + gate1 * attention(modulate(norm(x))), then x + gate2 * mlp(modulate(norm(x))), with the six
// modulation vectors from one zero-initialised Linear of SiLU(c).
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(std::int64_t hidden, std::int64_t heads, std::int64_t mlp_hidden, bool explicit_weights = false)
      : hidden_(hidden), heads_(heads), explicit_(explicit_weights) {
    // One Linear for q, k and v: one matrix product instead of three.
    qkv_ = register_module("qkv", xavier(Linear(hidden, 3 * hidden)));
    proj_ = register_module("proj", xavier(Linear(hidden, hidden)));
    fc1_ = register_module("fc1", xavier(Linear(hidden, mlp_hidden)));
    fc2_ = register_module("fc2", xavier(Linear(mlp_hidden, hidden)));
    ada_ = register_module("ada", zeroed(Linear(hidden, 6 * hidden)));
  }

  // x: [B, T, D]; c: SiLU of the conditioning, [B, D].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& c) {
    const std::int64_t batch = x.size(0), tokens = x.size(1), d = hidden_ / heads_;
    auto mod = ada_->forward(c).unsqueeze(1).chunk(6, -1);  // each [B, 1, D]
    auto h = modulate(layer_norm(x), mod[0], mod[1]);

    // [B, T, 3 D] -> [3, B, heads, T, d]: features are q, k, v, each heads x d.
    auto qkv = qkv_->forward(h).reshape({batch, tokens, 3, heads_, d}).permute({2, 0, 3, 1, 4});
    auto parts = qkv.unbind(0);
    auto attended =
        attention(parts[0], parts[1], parts[2], explicit_).transpose(1, 2).reshape({batch, tokens, hidden_});
    auto y = torch::addcmul(x, mod[2], proj_->forward(attended));

    h = modulate(layer_norm(y), mod[3], mod[4]);
    h = fc2_->forward(tanh_gelu(fc1_->forward(h)));
    return torch::addcmul(y, mod[5], h);
  }

 private:
  std::int64_t hidden_, heads_;
  bool explicit_;  // attention weights formed explicitly (see attention())
  Linear qkv_{nullptr}, proj_{nullptr}, fc1_{nullptr}, fc2_{nullptr}, ada_{nullptr};
};
TORCH_MODULE(Block);

class DiTModel : public Model {
 public:
  DiTModel(const Params& p, const BuildContext& ctx)
      : data_(ctx.flow_space()), num_classes_(ctx.flow_space().num_classes) {
    require_image("dit", data_);
    interval_ = takes_interval(ctx, "dit");
    patch_ = p.integer("patch_size");
    const std::int64_t hidden = p.integer("hidden");
    const std::int64_t depth = p.integer("depth");
    const std::int64_t heads = p.integer("heads");
    const std::int64_t features = p.integer("time_embedding");
    const auto mlp_hidden =
        static_cast<std::int64_t>(std::llround(static_cast<double>(hidden) * p.real("mlp_ratio")));
    const std::int64_t channels = data_.channels(), height = data_.height(), width = data_.width();
    if (height % patch_ != 0 || width % patch_ != 0)
      throw InputError("dit: the image size " + std::to_string(height) + "x" + std::to_string(width) +
                       " is not divisible by patch_size = " + std::to_string(patch_) +
                       "; choose a patch size that divides both sides");
    if (hidden % 4 != 0)  // the config validator checks this first
      throw InputError("dit: hidden must be a multiple of 4 (2D sin-cos positions), got " +
                       std::to_string(hidden));
    if (hidden % heads != 0)
      throw InputError("dit: hidden = " + std::to_string(hidden) +
                       " is not divisible by heads = " + std::to_string(heads));
    if (mlp_hidden < 1) throw InputError("dit: hidden x mlp_ratio must be at least 1");
    if (features < 2 || features % 2 != 0)
      throw InputError("dit: time_embedding must be even and at least 2, got " + std::to_string(features));
    rows_ = height / patch_;
    cols_ = width / patch_;
    const std::int64_t tokens = rows_ * cols_;

    // Patches to tokens: a conv with kernel = stride = patch is a Linear on each flattened patch.
    embed_ = register_module(
        "embed", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, hidden, patch_).stride(patch_)));
    {
      torch::NoGradGuard no_grad;
      torch::nn::init::xavier_uniform_(embed_->weight.view({hidden, -1}));
      embed_->bias.zero_();
    }
    positions_ = register_buffer("positions", sincos_positions(hidden, rows_, cols_));

    // c = MLP(sinusoidal(t)) + class row (one per class and one for the null label).
    time_features_ = TimeFeatures(*this, features);
    time1_ = register_module("time1", Linear(features, hidden));
    time2_ = register_module("time2", Linear(hidden, hidden));
    {
      torch::NoGradGuard no_grad;
      torch::nn::init::normal_(time1_->weight, 0.0, 0.02);
      torch::nn::init::normal_(time2_->weight, 0.0, 0.02);
    }
    if (interval_) {
      // An interval [t, s] (objective meanflow): the same features of its length s - t, through
      // their own two layers, added to the time's.
      interval1_ = register_module("interval1", Linear(features, hidden));
      interval2_ = register_module("interval2", Linear(hidden, hidden));
      torch::NoGradGuard no_grad;
      torch::nn::init::normal_(interval1_->weight, 0.0, 0.02);
      torch::nn::init::normal_(interval2_->weight, 0.0, 0.02);
    }
    if (num_classes_ > 0) {
      classes_ = register_module("classes", torch::nn::Embedding(num_classes_ + 1, hidden));
      torch::NoGradGuard no_grad;
      torch::nn::init::normal_(classes_->weight, 0.0, 0.02);
    }

    for (std::int64_t i = 0; i < depth; ++i)
      blocks_.push_back(
          register_module("block" + std::to_string(i), Block(hidden, heads, mlp_hidden, interval_)));

    final_ada_ = register_module("final_ada", zeroed(Linear(hidden, 2 * hidden)));
    final_ = register_module("final", zeroed(Linear(hidden, patch_ * patch_ * channels)));

    // Per sample: patch embedding, time MLP, per block qkv + proj + MLP on every token, attention's
    // two T x T products, the adaLN Linear; the final adaLN and projection.
    const double t = static_cast<double>(tokens), dim = static_cast<double>(hidden);
    macs_ = t * static_cast<double>(channels * patch_ * patch_) * dim +
            static_cast<double>(features * hidden + hidden * hidden) +
            static_cast<double>(depth) * (t * (4 * dim * dim + 2 * dim * static_cast<double>(mlp_hidden)) +
                                          2 * t * t * dim + 6 * dim * dim) +
            2 * dim * dim + t * dim * static_cast<double>(patch_ * patch_ * channels);
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const Condition& condition) override {
    require_batch_shape("dit", x, data_);
    const std::int64_t batch = x.size(0), channels = data_.channels();
    // [B, D, rows, cols] -> [B, T, D] (the sum with the positions makes it contiguous).
    auto tokens = embed_->forward(x).flatten(2).transpose(1, 2) + positions_;

    auto c = time2_->forward(torch::silu(time1_->forward(time_features_(t, batch).to(x.dtype()))));
    if (interval_)
      c = c + interval2_->forward(torch::silu(
                  interval1_->forward(time_features_(interval_length(condition, t), batch).to(x.dtype()))));
    if (classes_) c = c + classes_->forward(class_rows("dit", condition, batch, num_classes_, x.device()));
    c = torch::silu(c);  // every adaLN Linear reads SiLU(c)

    for (auto& block : blocks_) tokens = block->forward(tokens, c);

    auto mod = final_ada_->forward(c).unsqueeze(1).chunk(2, -1);
    auto out = final_->forward(modulate(layer_norm(tokens), mod[0], mod[1]));  // [B, T, p p C]
    // Unpatchify: token (r, s), feature (i, j, ch) -> pixel (ch, r p + i, s p + j).
    out = out.reshape({batch, rows_, cols_, patch_, patch_, channels})
              .permute({0, 5, 1, 3, 2, 4})
              .reshape({batch, channels, rows_ * patch_, cols_ * patch_});
    // Under autocast the projection computes in bfloat16; the engine gets x's dtype back.
    return out.to(x.scalar_type());
  }

  double macs_per_sample() const override { return macs_; }
  // LayerNorm and attention act within one image; no state changes in forward.
  bool rows_independent() const override { return true; }
  std::vector<std::string> times() const override {
    return interval_ ? std::vector<std::string>{kIntervalEnd} : std::vector<std::string>{};
  }

 private:
  DataInfo data_;
  bool interval_ = false;  // takes the interval's end s (condition extra kIntervalEnd)
  std::int64_t num_classes_;
  std::int64_t patch_ = 2, rows_ = 0, cols_ = 0;
  double macs_ = 0.0;
  torch::nn::Conv2d embed_{nullptr};
  torch::Tensor positions_;  // [1, T, D], fixed
  TimeFeatures time_features_;
  Linear time1_{nullptr}, time2_{nullptr};
  Linear interval1_{nullptr}, interval2_{nullptr};  // only with interval_
  torch::nn::Embedding classes_{nullptr};           // [num_classes + 1, D]; none when unlabelled
  std::vector<Block> blocks_;
  Linear final_ada_{nullptr}, final_{nullptr};
};

}  // namespace

void register_dit(Registrar& registrar) {
  registrar.add_type<Model, DiTModel>(ComponentDecl{
      "dit",
      "diffusion transformer for images [C, H, W] (Peebles & Xie 2023, adaLN-Zero): patches as tokens, "
      "2D sin-cos positions, blocks modulated by the embedding of t and the class",
      {ParamSpec::integer("patch_size", 2,
                          "side of the square patches (must divide the image's height and width)")
           .at_least(1),
       ParamSpec::integer("hidden", 128, "token width (a multiple of 4 and of heads)")
           .at_least(4)
           .multiple_of(4),
       ParamSpec::integer("depth", 6, "number of transformer blocks").at_least(1),
       ParamSpec::integer("heads", 4, "attention heads (must divide hidden)").at_least(1),
       ParamSpec::real("mlp_ratio", 4.0, "hidden width of each block's MLP, as a multiple of hidden")
           .greater_than(0),
       ParamSpec::integer("time_embedding", 256, "number of sinusoidal features of t")
           .at_least(2)
           .multiple_of(2)}});
}

}  // namespace pathline::models_image
