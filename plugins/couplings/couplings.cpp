// Plugin "couplings": how noise and data minibatches are paired for training.
#include <utility>

#include "pathline/plugin.hpp"

namespace {

// The independent coupling q(x0) q(x1) of conditional flow matching (Lipman et al. 2022): row i of
// the noise is paired with row i of the data, as drawn.
class IndependentCoupling : public pathline::Coupling {
 public:
  IndependentCoupling(const pathline::Params&, const pathline::BuildContext&) {}

  std::pair<torch::Tensor, torch::Tensor> couple(const torch::Tensor& x0, const torch::Tensor& x1,
                                                 at::Generator&) override {
    return {x0, x1};
  }
};

void register_couplings(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Coupling, IndependentCoupling>(pathline::ComponentDecl{
      "independent", "pairs noise and data rows as drawn (independent coupling)", {}});
}

}  // namespace

PATHLINE_PLUGIN("couplings", "0.1.0", register_couplings)
