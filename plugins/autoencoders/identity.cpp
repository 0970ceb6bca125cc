// `identity`: the default autoencoder, which leaves the data as it is, so that the flow runs on the
// data. The engine skips it entirely; it is a component so that an ablation can sweep
// autoencoder.type across it (pixel space against a latent space).
#include "autoencoders.hpp"

namespace pathline::autoencoders {

namespace {

class Identity : public Autoencoder {
 public:
  Identity(const Params&, const BuildContext&) {}
  DataInfo latent(const DataInfo& data) const override { return data; }
  Posterior encode(const torch::Tensor& x, const Condition&) override { return {x, torch::Tensor()}; }
  torch::Tensor decode(const torch::Tensor& z, const Condition&) override { return z; }
  bool trainable() const override { return false; }
};

}  // namespace

void register_identity(Registrar& registrar) {
  registrar.add_type<Autoencoder, Identity>(
      {"identity",
       "no autoencoder: the flow runs on the data itself (a trained run's `run` key is ignored)",
       {}});
}

}  // namespace pathline::autoencoders
