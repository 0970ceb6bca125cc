// Plugin "parameterizations": what the model predicts. The SDK's Parameterization converts the
// prediction to every other quantity through the pair (x0_hat, x1_hat) (docs/concepts.md,
// "Parameterizations").
#include "pathline/plugin.hpp"

namespace {

using pathline::Quantity;

template <Quantity Q>
class Predicts : public pathline::Parameterization {
 public:
  Predicts(const pathline::Params&, const pathline::BuildContext&) {}
  Quantity predicts() const override { return Q; }
};

template <Quantity Q>
void add(pathline::Registrar& registrar, const char* doc) {
  registrar.add_type<pathline::Parameterization, Predicts<Q>>(
      pathline::ComponentDecl{pathline::to_string(Q), doc, {}});
}

void register_parameterizations(pathline::Registrar& registrar) {
  // The ends of [0, 1] where a prediction says nothing about part of the pair, and what configs
  // do about it, are in parameterization.hpp ("Finiteness at the ends").
  add<Quantity::velocity>(registrar, "the model predicts the velocity u_t = alpha' x1 + sigma' x0");
  add<Quantity::noise>(
      registrar, "the model predicts the noise x0 (epsilon-prediction); sample from sample.t_start > 0");
  add<Quantity::data>(registrar,
                      "the model predicts the data x1 (x-prediction); sample to sample.t_end < 1 or with "
                      "euler/midpoint");
  add<Quantity::score>(
      registrar,
      "the model predicts the score grad log p_t(x_t) = -x0 / sigma_t; its target diverges "
      "as t -> 1: train with a time sampler thin there (beta, b > 2), sample from t_start > 0");
}

}  // namespace

PATHLINE_PLUGIN("parameterizations", "0.1.0", register_parameterizations)
