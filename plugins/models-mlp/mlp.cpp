// Plugin "models-mlp": a plain multilayer perceptron on (flattened x, embedded t), the model of the
// 2D examples of Lipman et al. 2022 and Tong et al. 2023 (torchcfm); on labelled data it also takes
// a learned class embedding, with one row for the null label of classifier-free guidance (Ho &
// Salimans 2022).
#include <cmath>
#include <string>

#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;

constexpr double kPi = 3.14159265358979323846;

torch::nn::AnyModule make_activation(const std::string& name) {
  if (name == "silu") return torch::nn::AnyModule(torch::nn::SiLU());
  if (name == "relu") return torch::nn::AnyModule(torch::nn::ReLU());
  if (name == "gelu") return torch::nn::AnyModule(torch::nn::GELU());
  if (name == "tanh") return torch::nn::AnyModule(torch::nn::Tanh());
  throw pathline::InputError("mlp: unknown activation '" + name + "'");
}

class MlpModel : public pathline::Model {
 public:
  MlpModel(const Params& p, const BuildContext& ctx) : num_classes_(ctx.flow_space().num_classes) {
    interval_ = pathline::takes_interval(ctx, "mlp");
    const std::int64_t width = p.integer("width");
    const std::int64_t depth = p.integer("depth");
    const std::int64_t embedding = p.integer("time_embedding");
    if (embedding % 2 != 0)  // the config validator checks this first (multiple_of(2))
      throw pathline::InputError("mlp: time_embedding must be even, got " + std::to_string(embedding));
    if (ctx.flow_space().shape.empty())
      throw pathline::InputError("mlp: the data shape is unknown (the model is built after the [dataset])");
    const std::int64_t dim = ctx.flow_space().numel();

    // Sinusoidal time features sin(w_k t), cos(w_k t) with angular frequencies w_k geometric from
    // 1 to 1000 (Vaswani et al. 2017, as used for diffusion time by Ho et al. 2020). cos is
    // computed as sin(. + pi/2), so the embedding is one addcmul and one sin: sin(phase + t freqs).
    const std::int64_t half = embedding / 2;
    if (half > 0) {
      // A model trained on intervals regresses on its own derivative along the flow (meanflow's
      // target holds du/dt): a feature of frequency w adds w cos(w t) to it, so its features stop at
      // 10 instead of 1000 (on the checkerboard, features up to 1000 left one-step samples at an
      // energy distance of 0.77, raw t at 0.034).
      const double top = interval_ ? 1.0 : 3.0;
      auto w = half == 1 ? torch::ones({1}) : torch::logspace(0.0, top, half);
      freqs_ = register_buffer("freqs", torch::cat({w, w}).unsqueeze(0));
      phase_ = register_buffer("phase",
                               torch::cat({torch::zeros({half}), torch::full({half}, kPi / 2)}).unsqueeze(0));
    }

    // The class embedding's width joins the input; the layers are created in the same order either
    // way, so an unconditional MLP draws exactly the initial weights it drew before labels existed.
    const std::int64_t class_width = num_classes_ > 0 ? p.integer("class_embedding") : 0;
    // An interval [t, s] (objective meanflow) adds the same features of its length s - t.
    const std::int64_t in = dim + (half > 0 ? embedding : 1) * (interval_ ? 2 : 1) + class_width;
    for (std::int64_t i = 0; i < depth; ++i) {
      net_->push_back(torch::nn::Linear(i == 0 ? in : width, width));
      net_->push_back(make_activation(p.string("activation")));
      macs_ += static_cast<double>((i == 0 ? in : width) * width);
    }
    net_->push_back(torch::nn::Linear(width, dim));
    macs_ += static_cast<double>(width * dim);
    register_module("net", net_);

    // One row per class and a last row, index num_classes, for the null label (pathline::kNullLabel,
    // and an undefined label tensor): the unconditional branch of classifier-free guidance is a
    // learned class of its own, trained on the labels the engine drops (Ho & Salimans 2022).
    if (num_classes_ > 0)
      classes_ = register_module("classes", torch::nn::Embedding(num_classes_ + 1, class_width));
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t,
                        const pathline::Condition& condition) override {
    const std::int64_t batch = x.size(0);
    // t: [B] (or a single time, broadcast over the batch).
    std::vector<torch::Tensor> inputs = {x.flatten(1), time_features(t, x).expand({batch, -1})};
    // The interval's length s - t (0 without the extra: the velocity at t).
    if (interval_)
      inputs.push_back(time_features(pathline::interval_length(condition, t), x).expand({batch, -1}));
    if (classes_) inputs.push_back(classes_->forward(class_rows(condition, batch, x.device())).to(x.dtype()));
    return net_->forward(torch::cat(inputs, 1)).view(x.sizes());
  }

  double macs_per_sample() const override { return macs_; }
  std::vector<std::string> times() const override {
    return interval_ ? std::vector<std::string>{pathline::kIntervalEnd} : std::vector<std::string>{};
  }
  // Each row is its own (x, t, label): no batch statistics, no state.
  bool rows_independent() const override { return true; }

 private:
  // Sinusoidal features of a time (or t as is without them): [B or 1, E].
  torch::Tensor time_features(const torch::Tensor& t, const torch::Tensor& x) const {
    return freqs_.defined() ? torch::addcmul(phase_, t.to(freqs_.options()).reshape({-1, 1}), freqs_).sin_()
                            : t.to(x.options()).reshape({-1, 1});
  }

  // The embedding rows of the batch's labels, checked: a label outside 0 .. num_classes - 1 (other
  // than the null label) is a caller's mistake, and the lookup would fail without saying why.
  torch::Tensor class_rows(const pathline::Condition& condition, std::int64_t batch,
                           const torch::Device& device) const {
    if (condition.labels.defined() && (condition.labels.dim() != 1 || condition.labels.size(0) != batch))
      throw pathline::Error("mlp: the condition holds " + std::to_string(condition.labels.numel()) +
                            " labels for a batch of " + std::to_string(batch) + " samples");
    if (condition.labels.defined() && batch > 0) {
      const std::int64_t largest = condition.labels.max().item<std::int64_t>();
      if (largest >= num_classes_)
        throw pathline::Error("mlp: a label is " + std::to_string(largest) + "; the data has classes 0 to " +
                              std::to_string(num_classes_ - 1) + " (and the null label " +
                              std::to_string(pathline::kNullLabel) + ")");
    }
    return pathline::embedding_index(condition, batch, num_classes_, device);
  }

  std::int64_t num_classes_;
  bool interval_ = false;  // takes the interval's end s (condition extra kIntervalEnd)
  double macs_ = 0.0;      // sum of in * out over the linear layers
  torch::nn::Sequential net_;
  torch::nn::Embedding classes_{nullptr};  // [num_classes + 1, class_embedding]; none when unlabelled
  torch::Tensor freqs_;                    // [1, E]: w_1..w_{E/2} twice
  torch::Tensor phase_;                    // [1, E]: E/2 zeros, then E/2 times pi/2
};

void register_mlp(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Model, MlpModel>(pathline::ComponentDecl{
      "mlp",
      "multilayer perceptron on concat(flattened x, sinusoidal features of t, class embedding on labelled "
      "data)",
      {ParamSpec::integer("width", 256, "hidden units per layer").at_least(1),
       ParamSpec::integer("depth", 4, "number of hidden layers").at_least(1),
       ParamSpec::choice("activation", {"silu", "relu", "gelu", "tanh"}, "silu",
                         "nonlinearity after every hidden layer"),
       ParamSpec::integer("time_embedding", 32, "number of sinusoidal features of t (even; 0: feed t as is)")
           .at_least(0)
           .multiple_of(2),
       ParamSpec::integer("class_embedding", 32,
                          "width of the learned class embedding, used on labelled data only (one row per "
                          "class and one for the null label)")
           .at_least(1)}});
}

}  // namespace

PATHLINE_PLUGIN("models-mlp", "0.1.0", register_mlp)
