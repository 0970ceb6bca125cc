// Plugin "example-paths": two new paths, `example_power` (affine: four coefficients) and
// `example_bridge` (not affine: it draws its own x_t).
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

// A path with noise of its own: the straight line plus a bump of fresh Gaussian noise that vanishes
// at both ends, x_t = t x1 + (1 - t) x0 + s t (1 - t) z with z ~ N(0, I) for every draw. Its velocity
// target is the time derivative along the draw, x1 - x0 + s (1 - 2t) z. Not affine: the engine
// trains it with velocity predictions and samples it with velocity solvers.
class BridgePath : public pathline::Path {
 public:
  BridgePath(const pathline::Params& p, const pathline::BuildContext&) : scale_(p.real("scale")) {}

  // The affine part: alpha_t = t, sigma_t = 1 - t.
  pathline::PathCoefficients coefficients(const torch::Tensor& t) const override {
    return {t.clone(), 1.0 - t, torch::ones_like(t), -torch::ones_like(t)};
  }

  pathline::PathSample sample(const torch::Tensor& x0, const torch::Tensor& x1, const torch::Tensor& t,
                              at::Generator& gen) const override {
    const auto c = coefficients(t).broadcast_to_rank(x0.dim());
    // Draw z from the engine's generator only (on the CPU, then to the batch's device).
    const torch::Tensor z = at::randn(x0.sizes(), gen, x0.options().device(torch::kCPU)).to(x0.device());
    const torch::Tensor gamma = scale_ * c.alpha * c.sigma, d_gamma = scale_ * (1.0 - 2.0 * c.alpha);
    return {interpolate(c, x0, x1) + gamma * z, conditional_velocity(c, x0, x1) + d_gamma * z};
  }
  bool affine() const override { return false; }

 private:
  double scale_;
};

void register_paths(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Path, PowerPath>(
      {"example_power",
       "x_t = (1 - (1 - t)^p) x1 + (1 - t)^p x0: a time-warped straight line (example plugin)",
       {pathline::ParamSpec::real("power", 2.0, "the exponent p (1: the linear path)").range(1.0, 10.0)}});
  registrar.add_type<pathline::Path, BridgePath>(
      {"example_bridge",
       "x_t = t x1 + (1 - t) x0 + s t (1 - t) z, z ~ N(0, I): a line with noise of its own (example plugin)",
       {pathline::ParamSpec::real("scale", 1.0, "s, the size of the noise bump").range(0.0, 10.0)}});
}

}  // namespace

PATHLINE_PLUGIN("example-paths", "1.0.0", register_paths)
