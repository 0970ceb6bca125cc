// `conv_vae`: a small convolutional variational autoencoder for images (Kingma & Welling 2014, in
// the shape latent diffusion uses: Rombach et al. 2022). The encoder halves the resolution once or
// twice (`downsample` 2 or 4) with strided convolutions and residual blocks and returns a diagonal
// Gaussian posterior; the decoder mirrors it with nearest-neighbour upsampling. Trained on
// reconstruction (L1 or squared error) plus kl_weight times the KL divergence to N(0, I); a flow uses
// the posterior mean.
#include "autoencoders.hpp"

namespace pathline::autoencoders {

namespace {

// GroupNorm over at most 8 groups that divide the channels.
torch::nn::GroupNorm group_norm(std::int64_t channels) {
  std::int64_t groups = std::min<std::int64_t>(8, channels);
  while (channels % groups != 0) --groups;
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels));
}

torch::nn::Conv2d conv3x3(std::int64_t in, std::int64_t out, std::int64_t stride = 1) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1));
}

// x + conv(silu(norm(conv(silu(norm(x)))))), the second convolution starting at zero so that a
// fresh block is the identity.
struct ResBlockImpl : torch::nn::Module {
  explicit ResBlockImpl(std::int64_t channels)
      : norm1(register_module("norm1", group_norm(channels))),
        conv1(register_module("conv1", conv3x3(channels, channels))),
        norm2(register_module("norm2", group_norm(channels))),
        conv2(register_module("conv2", conv3x3(channels, channels))) {
    torch::NoGradGuard no_grad;
    conv2->weight.zero_();
    conv2->bias.zero_();
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = conv1(torch::silu(norm1(x)));
    return x + conv2(torch::silu(norm2(h)));
  }
  torch::nn::GroupNorm norm1;
  torch::nn::Conv2d conv1;
  torch::nn::GroupNorm norm2;
  torch::nn::Conv2d conv2;
};
TORCH_MODULE(ResBlock);

class ConvVae : public Autoencoder {
 public:
  ConvVae(const Params& p, const BuildContext& ctx)
      : data_(ctx.data),
        channels_(p.integer("channels")),
        latent_channels_(p.integer("latent_channels")),
        downsample_(p.integer("downsample")),
        padding_(p.integer("padding")),
        kl_weight_(p.real("kl_weight")),
        l1_(p.string("reconstruction") == "l1") {
    if (downsample_ != 2 && downsample_ != 4)
      throw InputError("conv_vae: downsample = " + std::to_string(downsample_) + "; it must be 2 or 4");
    if (!data_.is_image())
      throw InputError("conv_vae: needs images shaped [channels, height, width]; the data's samples are " +
                       shape_of(data_));
    const std::int64_t h = data_.height() + 2 * padding_, w = data_.width() + 2 * padding_;
    if (h % downsample_ != 0 || w % downsample_ != 0)
      throw InputError(
          "conv_vae: the padded image is " + std::to_string(h) + " x " + std::to_string(w) +
          ", which downsample = " + std::to_string(downsample_) +
          " does not divide; choose padding so that it does (28 x 28 with padding 2 gives 32 x 32)");
    const std::int64_t c = channels_, c2 = 2 * channels_;
    // Encoder: C -> c at full size, then c -> 2c at half size, (2c -> 2c at a quarter), a residual
    // block after each, the posterior's mean and log-variance from the last.
    encoder_->push_back(conv3x3(data_.channels(), c));
    encoder_->push_back(ResBlock(c));
    encoder_->push_back(conv3x3(c, c2, 2));
    encoder_->push_back(ResBlock(c2));
    if (downsample_ == 4) {
      encoder_->push_back(conv3x3(c2, c2, 2));
      encoder_->push_back(ResBlock(c2));
    }
    encoder_->push_back(group_norm(c2));
    encoder_->push_back(torch::nn::SiLU());
    encoder_->push_back(conv3x3(c2, 2 * latent_channels_));
    register_module("encoder", encoder_);
    // Decoder: the mirror image, upsampling by nearest neighbour and a convolution.
    decoder_->push_back(conv3x3(latent_channels_, c2));
    decoder_->push_back(ResBlock(c2));
    if (downsample_ == 4) {
      decoder_->push_back(torch::nn::Upsample(
          torch::nn::UpsampleOptions().scale_factor(std::vector<double>{2.0, 2.0}).mode(torch::kNearest)));
      decoder_->push_back(conv3x3(c2, c2));
      decoder_->push_back(ResBlock(c2));
    }
    decoder_->push_back(torch::nn::Upsample(
        torch::nn::UpsampleOptions().scale_factor(std::vector<double>{2.0, 2.0}).mode(torch::kNearest)));
    decoder_->push_back(conv3x3(c2, c));
    decoder_->push_back(ResBlock(c));
    decoder_->push_back(group_norm(c));
    decoder_->push_back(torch::nn::SiLU());
    decoder_->push_back(conv3x3(c, data_.channels()));
    register_module("decoder", decoder_);
  }

  DataInfo latent(const DataInfo& data) const override {
    DataInfo z;
    z.shape = {latent_channels_, (data.height() + 2 * padding_) / downsample_,
               (data.width() + 2 * padding_) / downsample_};
    z.num_classes = data.num_classes;
    z.class_names = data.class_names;
    return z;
  }

  Posterior encode(const torch::Tensor& x, const Condition&) override {
    check_batch(x, data_.shape, "encode");
    torch::Tensor input = x;
    if (padding_ > 0) {
      // The border is the data's background (its lowest value, -1 for images).
      const double fill = std::isfinite(data_.min_value) ? data_.min_value : 0.0;
      input = torch::constant_pad_nd(x, {padding_, padding_, padding_, padding_}, fill);
    }
    torch::Tensor out = encoder_->forward(input);
    auto halves = out.chunk(2, 1);
    // The log-variance bounded as latent diffusion's autoencoders bound it.
    return {halves[0], halves[1].clamp(-30.0, 20.0)};
  }

  torch::Tensor decode(const torch::Tensor& z, const Condition&) override {
    check_batch(z, latent(data_).shape, "decode");
    torch::Tensor out = decoder_->forward(z);
    if (padding_ > 0)
      out = out.narrow(2, padding_, data_.height()).narrow(3, padding_, data_.width()).contiguous();
    return out;
  }

  AutoencoderLoss loss(const torch::Tensor& x, const Condition& condition,
                       at::Generator& generator) override {
    Posterior q = encode(x, condition);
    torch::Tensor mean = q.mean.to(torch::kFloat32), log_variance = q.log_variance.to(torch::kFloat32);
    // z = mean + sigma eps: the reparameterised draw, eps from the training stream.
    torch::Tensor eps =
        torch::randn(mean.sizes(), generator, mean.options().device(torch::kCPU)).to(mean.device());
    torch::Tensor z = mean + torch::exp(0.5 * log_variance) * eps;
    torch::Tensor recon = decode(z, condition).to(torch::kFloat32);
    torch::Tensor error = l1_ ? (recon - x).abs().mean() : (recon - x).square().mean();
    // KL(q || N(0, I)) per latent number, averaged.
    torch::Tensor kl = 0.5 * (mean.square() + log_variance.exp() - 1.0 - log_variance).mean();
    return {error + kl_weight_ * kl, {{"reconstruction", error.detach()}, {"kl", kl.detach()}}};
  }

 private:
  static std::string shape_of(const std::vector<std::int64_t>& shape) {
    std::string text;
    for (auto d : shape) text += (text.empty() ? "" : ", ") + std::to_string(d);
    return "[" + text + "]";
  }
  static std::string shape_of(const DataInfo& data) { return shape_of(data.shape); }
  static void check_batch(const torch::Tensor& x, const std::vector<std::int64_t>& shape, const char* what) {
    std::vector<std::int64_t> expected = shape;
    expected.insert(expected.begin(), x.dim() > 0 ? x.size(0) : 0);
    if (x.sizes().vec() != expected)
      throw Error(std::string("conv_vae: ") + what + " expects a batch shaped [B, " +
                  shape_of(shape).substr(1) + ", got " + c10::str(x.sizes()));
  }

  DataInfo data_;
  std::int64_t channels_, latent_channels_, downsample_, padding_;
  double kl_weight_;
  bool l1_;
  torch::nn::Sequential encoder_, decoder_;
};

}  // namespace

void register_conv_vae(Registrar& registrar) {
  registrar.add_type<Autoencoder, ConvVae>(
      {"conv_vae",
       "a small convolutional VAE for images: strided convolutions and residual blocks down to "
       "[latent_channels, H / downsample, W / downsample], trained on reconstruction + kl_weight KL",
       {ParamSpec::integer("channels", 32, "channels at full resolution (twice as many below it)")
            .at_least(1),
        ParamSpec::integer("latent_channels", 4, "channels of the latent").at_least(1),
        ParamSpec::integer("downsample", 4, "how much smaller the latent is on each side: 2 or 4")
            .range(2, 4),
        ParamSpec::integer("padding", 0,
                           "pixels of background added on each side before encoding (and cropped after "
                           "decoding), so that downsample divides the size: 2 turns 28 x 28 into 32 x 32")
            .at_least(0),
        ParamSpec::real("kl_weight", 1e-4,
                        "weight of the KL divergence to N(0, I), per latent number, against the "
                        "reconstruction error per data number")
            .at_least(0),
        ParamSpec::choice("reconstruction", {"l1", "mse"}, "l1",
                          "the reconstruction error: mean absolute (sharper) or mean squared")}});
}

}  // namespace pathline::autoencoders
