// Plugin "models-mlp": a plain multilayer perceptron on (flattened x, embedded t), the model of the
// 2D examples of Lipman et al. 2022 and Tong et al. 2023 (torchcfm).
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
  MlpModel(const Params& p, const BuildContext& ctx) {
    const std::int64_t width = p.integer("width");
    const std::int64_t depth = p.integer("depth");
    const std::int64_t embedding = p.integer("time_embedding");
    if (embedding % 2 != 0)  // the config validator checks this first (multiple_of(2))
      throw pathline::InputError("mlp: time_embedding must be even, got " +
                                 std::to_string(embedding));
    if (ctx.data_shape.empty()) throw pathline::InputError("mlp: the data shape is unknown");
    std::int64_t dim = 1;
    for (std::int64_t d : ctx.data_shape) dim *= d;

    // Sinusoidal time features sin(w_k t), cos(w_k t) with angular frequencies w_k geometric from
    // 1 to 1000 (Vaswani et al. 2017, as used for diffusion time by Ho et al. 2020). cos is
    // computed as sin(. + pi/2), so the embedding is one addcmul and one sin: sin(phase + t freqs).
    const std::int64_t half = embedding / 2;
    if (half > 0) {
      auto w = half == 1 ? torch::ones({1}) : torch::logspace(0.0, 3.0, half);
      freqs_ = register_buffer("freqs", torch::cat({w, w}).unsqueeze(0));
      phase_ = register_buffer(
          "phase", torch::cat({torch::zeros({half}), torch::full({half}, kPi / 2)}).unsqueeze(0));
    }

    const std::int64_t in = dim + (half > 0 ? embedding : 1);
    for (std::int64_t i = 0; i < depth; ++i) {
      net_->push_back(torch::nn::Linear(i == 0 ? in : width, width));
      net_->push_back(make_activation(p.string("activation")));
    }
    net_->push_back(torch::nn::Linear(width, dim));
    register_module("net", net_);
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t) override {
    // t: [B] (or a single time, broadcast over the batch).
    torch::Tensor features =
        freqs_.defined()
            ? torch::addcmul(phase_, t.to(freqs_.options()).reshape({-1, 1}), freqs_).sin_()
            : t.to(x.options()).reshape({-1, 1});
    features = features.expand({x.size(0), -1});
    return net_->forward(torch::cat({x.flatten(1), features}, 1)).view(x.sizes());
  }

 private:
  torch::nn::Sequential net_;
  torch::Tensor freqs_;  // [1, E]: w_1..w_{E/2} twice
  torch::Tensor phase_;  // [1, E]: E/2 zeros, then E/2 times pi/2
};

void register_mlp(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Model, MlpModel>(pathline::ComponentDecl{
      "mlp",
      "multilayer perceptron on concat(flattened x, sinusoidal features of t)",
      {ParamSpec::integer("width", 256, "hidden units per layer").at_least(1),
       ParamSpec::integer("depth", 4, "number of hidden layers").at_least(1),
       ParamSpec::choice("activation", {"silu", "relu", "gelu", "tanh"}, "silu",
                         "nonlinearity after every hidden layer"),
       ParamSpec::integer("time_embedding", 32,
                          "number of sinusoidal features of t (even; 0: feed t as is)")
           .at_least(0)
           .multiple_of(2)}});
}

}  // namespace

PATHLINE_PLUGIN("models-mlp", "0.1.0", register_mlp)
