// Plugin "paths": affine probability paths x_t = alpha_t x1 + sigma_t x0 (DESIGN.md, "The math").
#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;
using pathline::PathCoefficients;

// The conditional optimal-transport path of Lipman et al. 2022 ("Flow Matching for Generative
// Modeling", eq. 20): alpha_t = t, sigma_t = 1 - (1 - sigma_min) t, so that
// u_t = x1 - (1 - sigma_min) x0. With sigma_min = 0 it is rectified flow (Liu et al. 2022).
class LinearPath : public pathline::Path {
 public:
  LinearPath(const Params& p, const BuildContext&) : shrink_(1.0 - p.real("sigma_min")) {}

  PathCoefficients coefficients(const torch::Tensor& t) const override {
    return {t.clone(), 1.0 - shrink_ * t, torch::ones_like(t), torch::full_like(t, -shrink_)};
  }

 private:
  double shrink_;  // 1 - sigma_min
};

void register_paths(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Path, LinearPath>(pathline::ComponentDecl{
      "linear",
      "x_t = t x1 + (1 - (1 - sigma_min) t) x0: rectified flow / CondOT (Lipman et al. 2022)",
      {ParamSpec::real("sigma_min", 0.0, "std of the path at t = 1 (0: exact interpolation)")
           .at_least(0.0)
           .less_than(1.0)}});
}

}  // namespace

PATHLINE_PLUGIN("paths", "0.1.0", register_paths)
