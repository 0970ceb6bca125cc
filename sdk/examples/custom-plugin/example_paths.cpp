// Plugin "example-paths": one new path, `example_power`.
#include <pathline/plugin.hpp>

namespace {

// A time-warped straight line: x_t = alpha_t x1 + sigma_t x0 with sigma_t = (1 - t)^p and
// alpha_t = 1 - sigma_t, so alpha_0 = 0, alpha_1 = 1, sigma_0 = 1, sigma_1 = 0 and
// u_t = alpha'_t x1 + sigma'_t x0 = p (1 - t)^(p - 1) (x1 - x0). p = 1 is the linear path; a larger
// p moves fast early and slowly near the data. p >= 1 keeps the derivatives finite at t = 1.
class PowerPath : public pathline::Path {
 public:
  PowerPath(const pathline::Params& p, const pathline::BuildContext&) : power_(p.real("power")) {}

  pathline::PathCoefficients coefficients(const torch::Tensor& t) const override {
    auto sigma = torch::pow(1.0 - t, power_);
    auto d_alpha = power_ * torch::pow(1.0 - t, power_ - 1.0);
    return {1.0 - sigma, sigma, d_alpha, -d_alpha};
  }

 private:
  double power_;
};

void register_paths(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Path, PowerPath>(
      {"example_power",
       "x_t = (1 - (1 - t)^p) x1 + (1 - t)^p x0: a time-warped straight line (example plugin)",
       {pathline::ParamSpec::real("power", 2.0, "the exponent p (1: the linear path)").range(1.0, 10.0)}});
}

}  // namespace

PATHLINE_PLUGIN("example-paths", "1.0.0", register_paths)
