// Model `unet`: a small convolutional U-Net for images in the style of Ho et al. 2020 ("Denoising
// Diffusion Probabilistic Models") as refined by Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs
// on Image Synthesis", ADM): residual blocks whose second normalisation is modulated by the
// embedding of (t, class) (scale-shift, FiLM), multi-head self-attention at chosen resolutions and
// always in the middle, skip connections concatenated between the two halves, and zero-initialised
// last layers so that every block starts as the identity and a fresh network outputs exactly zero.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "image_model.hpp"

namespace pathline::models_image {
namespace {

using torch::nn::Conv2d;
using torch::nn::Conv2dOptions;
using torch::nn::GroupNorm;
using torch::nn::GroupNormOptions;
using torch::nn::Linear;

// GroupNorm needs a group count that divides the channels: the largest of 32, 16, ..., 1 that does
// (32 as in ADM when the width allows it).
std::int64_t groups_for(std::int64_t channels) {
  for (std::int64_t g : {32, 16, 8, 4, 2}) {
    if (channels % g == 0) return g;
  }
  return 1;
}

GroupNorm make_norm(std::int64_t channels) {
  return GroupNorm(GroupNormOptions(groups_for(channels), channels));
}

// Normalises in the norm's own precision. Under CPU bfloat16 autocast the convolutions hand over
// bfloat16 activations, and LibTorch 1.13's CPU group norm refuses them with float32 weights.
torch::Tensor normalise(GroupNorm& norm, const torch::Tensor& x) {
  return norm->forward(x.to(norm->weight.scalar_type()));
}

Conv2d make_conv(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride = 1) {
  return Conv2d(Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2));
}

// Layers whose output starts at zero: the last convolution of each residual branch, of each
// attention block and of the network (Dhariwal & Nichol 2021).
template <class Layer>
Layer zeroed(Layer layer) {
  torch::NoGradGuard no_grad;
  layer->weight.zero_();
  layer->bias.zero_();
  return layer;
}

// GroupNorm -> SiLU -> conv3x3 -> GroupNorm, modulated h (1 + scale) + shift by the embedding ->
// SiLU -> dropout -> conv3x3 (zero) -> plus the input (through a 1x1 conv when the width changes).
class ResBlockImpl : public torch::nn::Module {
 public:
  ResBlockImpl(std::int64_t in, std::int64_t out, std::int64_t embedding, double dropout)
      : out_(out), dropout_(dropout) {
    norm1_ = register_module("norm1", make_norm(in));
    conv1_ = register_module("conv1", make_conv(in, out, 3));
    film_ = register_module("film", Linear(embedding, 2 * out));
    norm2_ = register_module("norm2", make_norm(out));
    conv2_ = register_module("conv2", zeroed(make_conv(out, out, 3)));
    if (in != out) skip_ = register_module("skip", make_conv(in, out, 1));
  }

  // x: [B, in, H, W]; e: SiLU of the embedding, [B, E].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& e) {
    auto h = conv1_->forward(torch::silu(normalise(norm1_, x)));
    // [B, 2 out] -> scale and shift, each [B, out, 1, 1]; one addcmul applies both.
    auto film = film_->forward(e).unsqueeze(-1).unsqueeze(-1);
    auto scale = film.narrow(1, 0, out_), shift = film.narrow(1, out_, out_);
    h = torch::silu(torch::addcmul(shift, normalise(norm2_, h), scale + 1));
    if (dropout_ > 0) h = torch::dropout(h, dropout_, is_training());
    h = conv2_->forward(h);
    return (skip_ ? skip_->forward(x) : x) + h;
  }

  static double macs(std::int64_t in, std::int64_t out, std::int64_t embedding, std::int64_t pixels) {
    return static_cast<double>(9 * in * out * pixels + 9 * out * out * pixels +
                               (in != out ? in * out * pixels : 0) + embedding * 2 * out);
  }

 private:
  std::int64_t out_;
  double dropout_;
  GroupNorm norm1_{nullptr}, norm2_{nullptr};
  Conv2d conv1_{nullptr}, conv2_{nullptr}, skip_{nullptr};
  Linear film_{nullptr};
};
TORCH_MODULE(ResBlock);

// Multi-head self-attention over the H x W positions, plus the input: GroupNorm -> 1x1 conv to q, k,
// v -> softmax(q k^T / sqrt(d)) v per head -> 1x1 conv (zero). Head h's query, key and value are
// the qkv output's channels [3 d h, 3 d h + d), [3 d h + d, 3 d h + 2 d) and [3 d h + 2 d, 3 d (h + 1)),
// and its output goes to channels [d h, d (h + 1)).
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(std::int64_t channels, std::int64_t heads, bool explicit_weights = false)
      : channels_(channels), heads_(heads), explicit_(explicit_weights) {
    norm_ = register_module("norm", make_norm(channels));
    qkv_ = register_module("qkv", make_conv(channels, 3 * channels, 1));
    proj_ = register_module("proj", zeroed(make_conv(channels, channels, 1)));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    const std::int64_t batch = x.size(0), height = x.size(2), width = x.size(3);
    const std::int64_t d = channels_ / heads_;
    // [B, 3 C, H, W] -> [B, heads, T, 3 d]: each head's tokens, with its q, k and v side by side.
    auto qkv =
        qkv_->forward(normalise(norm_, x)).reshape({batch, heads_, 3 * d, height * width}).transpose(2, 3);
    auto parts = qkv.chunk(3, -1);
    auto out = attention(parts[0], parts[1], parts[2], explicit_);  // [B, heads, T, d]
    return x + proj_->forward(out.transpose(2, 3).reshape({batch, channels_, height, width}));
  }

  static double macs(std::int64_t channels, std::int64_t tokens) {
    return static_cast<double>(4 * channels * channels * tokens + 2 * tokens * tokens * channels);
  }

 private:
  std::int64_t channels_, heads_;
  bool explicit_;  // attention weights formed explicitly (see attention())
  GroupNorm norm_{nullptr};
  Conv2d qkv_{nullptr}, proj_{nullptr};
};
TORCH_MODULE(Attention);

// One resolution of the U-Net: residual blocks, each optionally followed by attention, then the
// change of resolution (a stride-2 conv going down, nearest upsampling and a conv going up; none at
// the bottom going down or at the top going up).
struct Level {
  std::vector<ResBlock> blocks;
  std::vector<Attention> attention;  // one per block; empty holders where there is none
  Conv2d resample{nullptr};
};

class UNetModel : public Model {
 public:
  UNetModel(const Params& p, const BuildContext& ctx)
      : data_(ctx.flow_space()), num_classes_(ctx.flow_space().num_classes) {
    require_image("unet", data_);
    interval_ = takes_interval(ctx, "unet");
    const std::int64_t channels = p.integer("channels");
    const std::vector<std::int64_t> mult = p.int_list("channel_mult");
    const std::int64_t blocks = p.integer("num_res_blocks");
    const std::vector<std::int64_t> attention_at = p.int_list("attention_resolutions");
    const std::int64_t heads = p.integer("heads");
    const double dropout = p.real("dropout");
    const std::int64_t features = p.integer("time_embedding");
    const std::int64_t embedding = p.integer("embedding") > 0 ? p.integer("embedding") : 4 * channels;
    channels_last_ = p.boolean("channels_last");
    if (mult.empty()) throw InputError("unet: channel_mult must name at least one level");
    if (features < 2 || features % 2 != 0)  // the config validator checks this first
      throw InputError("unet: time_embedding must be even and at least 2, got " + std::to_string(features));

    // Each level but the last halves the resolution, and the way back doubles it: the sides must
    // divide by 2^(levels - 1) for the skip connections to meet feature maps of their own size.
    std::int64_t height = data_.height(), width = data_.width();
    const std::int64_t factor = std::int64_t{1} << (mult.size() - 1);
    if (height % factor != 0 || width % factor != 0) {
      std::string list;
      for (auto m : mult) list += (list.empty() ? "" : ", ") + std::to_string(m);
      throw InputError("unet: the image size " + std::to_string(height) + "x" + std::to_string(width) +
                       " is not divisible by " + std::to_string(factor) +
                       " = 2^(levels - 1) for channel_mult [" + list +
                       "]; use fewer levels or another image size");
    }
    auto attends = [&](std::int64_t side) {
      return std::find(attention_at.begin(), attention_at.end(), side) != attention_at.end();
    };
    auto make_attention = [&](std::int64_t ch) {
      if (ch % heads != 0)
        throw InputError(
            "unet: " + std::to_string(ch) +
            " channels at an attention resolution are not divisible by heads = " + std::to_string(heads));
      return Attention(ch, heads, interval_);
    };

    // Time (and class) embedding: sinusoidal features -> Linear -> SiLU -> Linear, plus a learned
    // row per class and one for the null label (Ho & Salimans 2022).
    time_features_ = TimeFeatures(*this, features);
    time1_ = register_module("time1", Linear(features, embedding));
    time2_ = register_module("time2", Linear(embedding, embedding));
    macs_ += static_cast<double>(features * embedding + embedding * embedding);
    if (interval_) {
      // An interval [t, s] (objective meanflow): the same features of its length s - t, through
      // their own two layers, added to the time's.
      interval1_ = register_module("interval1", Linear(features, embedding));
      interval2_ = register_module("interval2", Linear(embedding, embedding));
      macs_ += static_cast<double>(features * embedding + embedding * embedding);
    }
    if (num_classes_ > 0)
      classes_ = register_module("classes", torch::nn::Embedding(num_classes_ + 1, embedding));

    std::int64_t ch = channels * mult[0];
    conv_in_ = register_module("conv_in", make_conv(data_.channels(), ch, 3));
    macs_ += static_cast<double>(9 * data_.channels() * ch * height * width);
    std::vector<std::int64_t> skips = {ch};  // widths of the skip connections, in push order
    for (std::size_t i = 0; i < mult.size(); ++i) {
      Level level;
      const std::string name = "down" + std::to_string(i);
      for (std::int64_t j = 0; j < blocks; ++j) {
        const std::int64_t out = channels * mult[i];
        level.blocks.push_back(
            register_module(name + "_block" + std::to_string(j), ResBlock(ch, out, embedding, dropout)));
        macs_ += ResBlockImpl::macs(ch, out, embedding, height * width);
        ch = out;
        level.attention.push_back(
            attends(height) ? register_module(name + "_attention" + std::to_string(j), make_attention(ch))
                            : Attention(nullptr));
        if (attends(height)) macs_ += AttentionImpl::macs(ch, height * width);
        skips.push_back(ch);
      }
      if (i + 1 < mult.size()) {
        level.resample = register_module(name + "_downsample", make_conv(ch, ch, 3, 2));
        height /= 2;
        width /= 2;
        macs_ += static_cast<double>(9 * ch * ch * height * width);
        skips.push_back(ch);
      }
      down_.push_back(std::move(level));
    }

    mid1_ = register_module("mid_block1", ResBlock(ch, ch, embedding, dropout));
    mid_attention_ = register_module("mid_attention", make_attention(ch));
    mid2_ = register_module("mid_block2", ResBlock(ch, ch, embedding, dropout));
    macs_ +=
        2 * ResBlockImpl::macs(ch, ch, embedding, height * width) + AttentionImpl::macs(ch, height * width);

    // Going up, each level has one block more than going down: the extra one takes the skip that
    // the downsampling conv (or, at the top, the input conv) left.
    for (std::size_t i = mult.size(); i-- > 0;) {
      Level level;
      const std::string name = "up" + std::to_string(i);
      for (std::int64_t j = 0; j <= blocks; ++j) {
        const std::int64_t in = ch + skips.back(), out = channels * mult[i];
        skips.pop_back();
        level.blocks.push_back(
            register_module(name + "_block" + std::to_string(j), ResBlock(in, out, embedding, dropout)));
        macs_ += ResBlockImpl::macs(in, out, embedding, height * width);
        ch = out;
        level.attention.push_back(
            attends(height) ? register_module(name + "_attention" + std::to_string(j), make_attention(ch))
                            : Attention(nullptr));
        if (attends(height)) macs_ += AttentionImpl::macs(ch, height * width);
      }
      if (i > 0) {
        level.resample = register_module(name + "_upsample", make_conv(ch, ch, 3));
        height *= 2;
        width *= 2;
        macs_ += static_cast<double>(9 * ch * ch * height * width);
      }
      up_.push_back(std::move(level));
    }

    norm_out_ = register_module("norm_out", make_norm(ch));
    conv_out_ = register_module("conv_out", zeroed(make_conv(ch, data_.channels(), 3)));
    macs_ += static_cast<double>(9 * ch * data_.channels() * height * width);
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const Condition& condition) override {
    require_batch_shape("unet", x, data_);
    const std::int64_t batch = x.size(0);
    auto embedding = time2_->forward(torch::silu(time1_->forward(time_features_(t, batch).to(x.dtype()))));
    if (interval_)
      embedding = embedding + interval2_->forward(torch::silu(interval1_->forward(
                                  time_features_(interval_length(condition, t), batch).to(x.dtype()))));
    if (classes_)
      embedding =
          embedding + classes_->forward(class_rows("unet", condition, batch, num_classes_, x.device()));
    // Every block applies its own Linear to SiLU(embedding); computed once here.
    const auto e = torch::silu(embedding);

    auto h = conv_in_->forward(channels_last_ ? x.contiguous(at::MemoryFormat::ChannelsLast) : x);
    std::vector<torch::Tensor> skips = {h};
    for (auto& level : down_) {
      for (std::size_t j = 0; j < level.blocks.size(); ++j) {
        h = level.blocks[j]->forward(h, e);
        if (level.attention[j]) h = level.attention[j]->forward(h);
        skips.push_back(h);
      }
      if (level.resample) {
        h = level.resample->forward(h);
        skips.push_back(h);
      }
    }
    h = mid2_->forward(mid_attention_->forward(mid1_->forward(h, e)), e);
    for (auto& level : up_) {
      for (std::size_t j = 0; j < level.blocks.size(); ++j) {
        h = level.blocks[j]->forward(torch::cat({h, skips.back()}, 1), e);
        skips.pop_back();
        if (level.attention[j]) h = level.attention[j]->forward(h);
      }
      if (level.resample)
        h = level.resample->forward(
            torch::upsample_nearest2d(h, std::vector<std::int64_t>{2 * h.size(2), 2 * h.size(3)}));
    }
    h = conv_out_->forward(torch::silu(normalise(norm_out_, h)));
    // Under autocast the last conv computes in bfloat16; the engine gets x's dtype back.
    return h.to(x.scalar_type()).contiguous();
  }

  double macs_per_sample() const override { return macs_; }
  // GroupNorm normalises each image on its own; dropout (training only) draws random numbers.
  bool rows_independent() const override { return !is_training(); }
  std::vector<std::string> times() const override {
    return interval_ ? std::vector<std::string>{kIntervalEnd} : std::vector<std::string>{};
  }

 private:
  DataInfo data_;
  std::int64_t num_classes_;
  bool channels_last_ = false;
  bool interval_ = false;  // takes the interval's end s (condition extra kIntervalEnd)
  double macs_ = 0.0;
  TimeFeatures time_features_;
  Linear time1_{nullptr}, time2_{nullptr};
  Linear interval1_{nullptr}, interval2_{nullptr};  // only with interval_
  torch::nn::Embedding classes_{nullptr};           // [num_classes + 1, E]; none when unlabelled
  Conv2d conv_in_{nullptr};
  std::vector<Level> down_, up_;  // up_ from the bottom level to the top
  ResBlock mid1_{nullptr}, mid2_{nullptr};
  Attention mid_attention_{nullptr};
  GroupNorm norm_out_{nullptr};
  Conv2d conv_out_{nullptr};
};

}  // namespace

void register_unet(Registrar& registrar) {
  registrar.add_type<Model, UNetModel>(ComponentDecl{
      "unet",
      "convolutional U-Net for images [C, H, W] (Ho et al. 2020, Dhariwal & Nichol 2021): residual blocks "
      "with scale-shift conditioning on t and the class, self-attention, skip connections",
      {ParamSpec::integer("channels", 32, "base width: channels of the first level").at_least(1),
       ParamSpec::int_list("channel_mult", {1, 2, 2},
                           "one entry per resolution: its width as a multiple of channels; each level after "
                           "the first halves the image, whose sides must divide by 2^(levels - 1)")
           .at_least(1)
           .min_size(1),
       ParamSpec::integer("num_res_blocks", 1, "residual blocks per level going down (one more going up)")
           .at_least(1),
       ParamSpec::int_list("attention_resolutions", {7},
                           "feature-map heights (the side of square images) with self-attention after "
                           "each block; the middle block always has it")
           .at_least(1),
       ParamSpec::integer("heads", 4, "attention heads (must divide the width where there is attention)")
           .at_least(1),
       ParamSpec::real("dropout", 0.0, "dropout probability inside the residual blocks")
           .at_least(0)
           .less_than(1),
       ParamSpec::integer("time_embedding", 32, "number of sinusoidal features of t")
           .at_least(2)
           .multiple_of(2),
       ParamSpec::integer(
           "embedding", 0,
           "width of the time and class embedding that conditions every block (0: 4 x channels)")
           .at_least(0),
       // Off by default: on the project's 2-core machine, with the default widths on 28x28, NHWC
       // training steps were no faster in float32 and about 5% slower under bfloat16 autocast.
       ParamSpec::boolean("channels_last", false,
                          "run the convolutions on channels-last (NHWC) tensors; the same model and "
                          "weights, only the memory layout (and the speed) differ")}});
}

}  // namespace pathline::models_image
