// Plugin "paths": affine probability paths x_t = alpha_t x1 + sigma_t x0 (docs/concepts.md, "Paths"),
// and a stochastic interpolant, which adds gamma_t z and draws its own x_t (Path::sample).
// Every path returns alpha_t, sigma_t and their exact time derivatives, shaped like t and computed
// in t's dtype. Time runs from noise (t = 0) to data (t = 1); the diffusion literature (Song et al.
// 2021) runs its time s the other way, so the diffusion paths below use s = 1 - t, ds/dt = -1.
#include <cmath>

#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;
using pathline::PathCoefficients;

constexpr double kPi = 3.14159265358979323846;

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

// The cosine path: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2), so alpha^2 + sigma^2 = 1
// (variance preserving) and the log-SNR is 2 log tan(pi t / 2). It is the "cosine schedule" of
// Nichol & Dhariwal 2021 without its offset, written as an affine path as in Albergo &
// Vanden-Eijnden 2023 (stochastic interpolants, the "trigonometric" interpolant) and Esser et al.
// 2024 (SD3, sec. 3.1). alpha' = (pi/2) cos(pi t / 2), sigma' = -(pi/2) sin(pi t / 2).
class CosinePath : public pathline::Path {
 public:
  CosinePath(const Params&, const BuildContext&) {}

  PathCoefficients coefficients(const torch::Tensor& t) const override {
    torch::Tensor angle = t * (kPi / 2);
    torch::Tensor sin = torch::sin(angle), cos = torch::cos(angle);
    return {sin, cos, cos * (kPi / 2), sin * (-kPi / 2)};
  }
};

// The variance-preserving path of DDPM (Ho et al. 2020) in its continuous form, the VP SDE of
// Song et al. 2021 ("Score-Based Generative Modeling through SDEs", eq. 11 and the perturbation
// kernel in its appendix B), written in our time as Lipman et al. 2022 (sec. 4.1, "Example I:
// diffusion conditional VFs", the VP case): with s = 1 - t,
//   beta(s) = beta_min + (beta_max - beta_min) s,
//   T(s) = int_0^s beta = beta_min s + (beta_max - beta_min) s^2 / 2,
//   alpha_t = exp(-T(s) / 2),   sigma_t = sqrt(1 - alpha_t^2) = sqrt(-expm1(-T(s))).
// Derivatives (ds/dt = -1): alpha'_t = beta(s) alpha_t / 2 and sigma'_t = -alpha_t alpha'_t / sigma_t.
//
// The path starts only approximately at noise: alpha_0 = exp(-T(1) / 2)
// = exp(-(beta_min + beta_max) / 4), 0.0066 with the defaults, and sigma_0 = sqrt(1 - alpha_0^2). At t = 1,
// sigma ~ sqrt(beta_min s), so sigma' ~ -sqrt(beta_min / s) / 2 diverges (integrably). To keep it finite,
// sigma's denominator in sigma' is clamped to pathline::kMinDivisor: sigma' is exact wherever sigma_t >= 1e-4
// (1 - t >= 1e-7 with the defaults: every float32 time but 1 and the one just below it) and -alpha alpha' /
// 1e-4 (-500 with the defaults) at t = 1 itself.
class VpPath : public pathline::Path {
 public:
  VpPath(const Params& p, const BuildContext&)
      : beta_min_(p.real("beta_min")), beta_max_(p.real("beta_max")) {
    if (!(beta_max_ >= beta_min_))
      throw pathline::InputError("vp: beta_max (" + std::to_string(beta_max_) +
                                 ") must be at least beta_min (" + std::to_string(beta_min_) + ")");
  }

  PathCoefficients coefficients(const torch::Tensor& t) const override {
    torch::Tensor s = 1.0 - t;
    torch::Tensor beta = beta_min_ + (beta_max_ - beta_min_) * s;
    torch::Tensor integral = s * (beta_min_ + 0.5 * (beta_max_ - beta_min_) * s);  // T(s)
    torch::Tensor alpha = torch::exp(-0.5 * integral);
    // sqrt(1 - alpha^2) with 1 - exp(-T) computed without cancellation near t = 1.
    torch::Tensor sigma = torch::sqrt(-torch::expm1(-integral));
    torch::Tensor d_alpha = 0.5 * beta * alpha;
    torch::Tensor d_sigma = -(alpha * d_alpha) / sigma.clamp_min(pathline::kMinDivisor);
    return {alpha, sigma, d_alpha, d_sigma};
  }

 private:
  double beta_min_, beta_max_;
};

// The "linear variance-preserving" path: alpha_t = t, sigma_t = sqrt(1 - t^2), so alpha^2 + sigma^2 = 1
// like `cosine` and `vp`, with the signal coefficient linear in t. It is the LinearVPScheduler of Meta's
// flow_matching library (flow_matching/path/scheduler/scheduler.py), which accompanies Lipman et al.
// 2024 ("Flow Matching Guide and Code", affine paths given by a scheduler (alpha_t, sigma_t)); as a
// time change of `cosine` it is t = sin(pi t' / 2). alpha'_t = 1, sigma'_t = -t / sigma_t.
// sigma_t is computed as sqrt((1 - t)(1 + t)): 1 - t^2 would cancel near t = 1. At t = 1, sigma'
// diverges like -1 / sqrt(2 (1 - t)) (integrably); as in VpPath, sigma's denominator is clamped to
// pathline::kMinDivisor, so sigma' is exact wherever sigma_t >= 1e-4 (1 - t >= 5e-9: every float32 time
// but 1) and -1 / kMinDivisor = -1e4 at t = 1 itself.
class LinearVpPath : public pathline::Path {
 public:
  LinearVpPath(const Params&, const BuildContext&) {}

  PathCoefficients coefficients(const torch::Tensor& t) const override {
    torch::Tensor sigma = torch::sqrt((1.0 - t) * (1.0 + t));
    torch::Tensor d_sigma = -t / sigma.clamp_min(pathline::kMinDivisor);
    return {t.clone(), sigma, torch::ones_like(t), d_sigma};
  }
};

// The variance-exploding path of SMLD / NCSN (Song & Ermon 2019), the VE SDE of Song et al. 2021
// (eq. 9 and the perturbation kernel in its appendix B), written in our time as Lipman et al. 2022
// (sec. 4.1, "Example I", the VE case):
//   alpha_t = 1,  sigma_t = sigma_min (sigma_max / sigma_min)^(1 - t),
//   alpha'_t = 0, sigma'_t = -log(sigma_max / sigma_min) sigma_t.
// It never reaches pure noise: at t = 0, x_0 = x1 + sigma_max x0, so the engine starts sampling from
// sigma_{t_start} z (sample.t_start), and sigma_max should dominate the data's spread (Song & Ermon
// 2020, "Improved Techniques", technique 1: as large as the largest distance between two training
// points). The default 15 covers every toy2d shape at scale 1 (checkerboard, the widest, spans
// [-4.45, 4.45]^2: diameter 12.6). At t = 1 it leaves sigma_min of noise on the data.
class VePath : public pathline::Path {
 public:
  VePath(const Params& p, const BuildContext&)
      : sigma_min_(p.real("sigma_min")), log_ratio_(std::log(p.real("sigma_max") / p.real("sigma_min"))) {
    if (!(log_ratio_ > 0))
      throw pathline::InputError("ve: sigma_max (" + std::to_string(p.real("sigma_max")) +
                                 ") must be above sigma_min (" + std::to_string(sigma_min_) + ")");
  }

  PathCoefficients coefficients(const torch::Tensor& t) const override {
    torch::Tensor sigma = sigma_min_ * torch::exp(log_ratio_ * (1.0 - t));
    return {torch::ones_like(t), sigma, torch::zeros_like(t), -log_ratio_ * sigma};
  }

 private:
  double sigma_min_, log_ratio_;  // log_ratio_ = log(sigma_max / sigma_min)
};

// A polynomial schedule alpha_t = t^n, sigma_t = 1 - t^n: n = 1 is rectified flow, n > 1 spends
// longer near noise, n < 1 longer near data. It is an instance of the general affine paths of
// Lipman et al. 2022 (sec. 4: any differentiable alpha_t, sigma_t) and the polynomial scheduler of
// the "Flow Matching Guide and Code" (Lipman et al. 2024, affine paths with a scheduler).
// alpha'_t = n t^(n-1) = -sigma'_t. For n < 1 this diverges at t = 0; t is then floored at
// pathline::kMinDivisor inside t^(n-1), so the derivatives are exact for t >= 1e-4 and finite at 0.
class PolynomialPath : public pathline::Path {
 public:
  PolynomialPath(const Params& p, const BuildContext&) : n_(p.real("exponent")) {}

  PathCoefficients coefficients(const torch::Tensor& t) const override {
    torch::Tensor alpha = torch::pow(t, n_);
    torch::Tensor base = n_ < 1.0 ? t.clamp_min(pathline::kMinDivisor) : t;
    torch::Tensor d_alpha = n_ * torch::pow(base, n_ - 1.0);
    return {alpha, 1.0 - alpha, d_alpha, -d_alpha};
  }

 private:
  double n_;
};

// A stochastic interpolant (Albergo & Vanden-Eijnden 2023, "Building normalizing flows with
// stochastic interpolants"; Albergo, Boffi & Vanden-Eijnden 2023, "Stochastic interpolants: a
// unifying framework"): x_t = alpha_t x1 + sigma_t x0 + gamma_t z with z ~ N(0, I) drawn afresh for
// every point, gamma_0 = gamma_1 = 0. The velocity target of a draw is its time derivative
// alpha'_t x1 + sigma'_t x0 + gamma'_t z, whose conditional mean given x_t is the velocity b(t, x)
// whose ODE carries the source to the data (the papers' probability flow): the engine trains and
// samples it like any velocity. Not affine: it trains velocity predictions only.
class StochasticInterpolant : public pathline::Path {
 public:
  StochasticInterpolant(const Params& p, const BuildContext&)
      : trig_(p.string("interpolant") == "trig"),
        sqrt_(p.string("gamma") == "sqrt"),
        a_(p.real("gamma_scale")) {}

  // alpha_t and sigma_t of the affine part: t and 1 - t, or sin(pi t / 2) and cos(pi t / 2).
  PathCoefficients coefficients(const torch::Tensor& t) const override {
    if (!trig_) return {t.clone(), 1.0 - t, torch::ones_like(t), -torch::ones_like(t)};
    const torch::Tensor angle = (kPi / 2) * t;
    return {torch::sin(angle), torch::cos(angle), (kPi / 2) * torch::cos(angle),
            -(kPi / 2) * torch::sin(angle)};
  }

  // gamma_t and gamma'_t. "quadratic": a t (1 - t), smooth at both ends. "sqrt": sqrt(a t (1 - t))
  // (the papers' Brownian-bridge choice), whose derivative diverges at t = 0 and 1: it is taken at t
  // kept kEnd away from them.
  std::pair<torch::Tensor, torch::Tensor> gamma(const torch::Tensor& t) const {
    if (!sqrt_) return {a_ * t * (1.0 - t), a_ * (1.0 - 2.0 * t)};
    const torch::Tensor inside = t.clamp(kEnd, 1.0 - kEnd);
    const torch::Tensor g = torch::sqrt(a_ * t * (1.0 - t));
    return {g, a_ * (1.0 - 2.0 * inside) / (2.0 * torch::sqrt(a_ * inside * (1.0 - inside)))};
  }

  pathline::PathSample sample(const torch::Tensor& x0, const torch::Tensor& x1, const torch::Tensor& t,
                              at::Generator& gen) const override {
    const PathCoefficients c = coefficients(t).broadcast_to_rank(x0.dim());
    std::vector<std::int64_t> shape(static_cast<std::size_t>(x0.dim()), 1);
    shape[0] = -1;
    auto [g, dg] = gamma(t);
    g = g.view(shape), dg = dg.view(shape);
    // z on the CPU from the engine's generator (a CUDA batch gets the same numbers as a CPU one).
    const torch::Tensor z = at::randn(x0.sizes(), gen, x0.options().device(torch::kCPU)).to(x0.device());
    return {interpolate(c, x0, x1) + g * z, conditional_velocity(c, x0, x1) + dg * z};
  }
  bool affine() const override { return false; }

 private:
  static constexpr double kEnd = 1e-3;
  bool trig_, sqrt_;
  double a_;
};

void register_paths(pathline::Registrar& registrar) {
  using pathline::ComponentDecl;
  using pathline::Path;
  registrar.add_type<Path, LinearPath>(
      ComponentDecl{"linear",
                    "x_t = t x1 + (1 - (1 - sigma_min) t) x0: rectified flow / CondOT (Lipman et al. 2022)",
                    {ParamSpec::real("sigma_min", 0.0, "std of the path at t = 1 (0: exact interpolation)")
                         .at_least(0.0)
                         .less_than(1.0)}});
  registrar.add_type<Path, CosinePath>(ComponentDecl{
      "cosine", "x_t = sin(pi t / 2) x1 + cos(pi t / 2) x0: variance-preserving trigonometric path", {}});
  registrar.add_type<Path, VpPath>(ComponentDecl{
      "vp",
      "DDPM / VP-SDE path (Song et al. 2021): alpha_t = exp(-T(1 - t) / 2), sigma_t = sqrt(1 - alpha_t^2)",
      {ParamSpec::real("beta_min", 0.1, "noise rate beta at the data end, t = 1 (Song et al. 2021: 0.1)")
           .greater_than(0.0)
           .at_most(100.0),
       ParamSpec::real("beta_max", 20.0,
                       "noise rate beta at the noise end, t = 0; alpha_0 = exp(-(beta_min + beta_max) / 4)")
           .greater_than(0.0)
           .at_most(1000.0)}});
  registrar.add_type<Path, LinearVpPath>(
      ComponentDecl{"linear_vp",
                    "x_t = t x1 + sqrt(1 - t^2) x0: variance preserving "
                    "with alpha_t = t (flow_matching's LinearVPScheduler); "
                    "sigma' = -t / sigma_t, floored to -1e4 at t = 1",
                    {}});
  registrar.add_type<Path, VePath>(ComponentDecl{
      "ve",
      "SMLD / VE-SDE path (Song et al. 2021): x_t = x1 + sigma_min (sigma_max / sigma_min)^(1 - t) x0",
      {ParamSpec::real("sigma_min", 0.01, "noise std left at the data end, t = 1").greater_than(0.0),
       ParamSpec::real("sigma_max", 15.0,
                       "noise std at t = 0; at least the data's diameter (15 covers every toy2d shape)")
           .greater_than(0.0)},
      // Its noise scale spans three orders of magnitude: first-order steps in t shrink it too fast
      // (euler at 100 steps misses the exact flow by 10%: energy distance 0.019 on the checkerboard),
      // a second-order one follows it (1%, 0.012; Karras et al. 2022 sample this path with Heun).
      {{"solver", "heun"}}});
  registrar.add_type<Path, PolynomialPath>(ComponentDecl{
      "polynomial",
      "x_t = t^exponent x1 + (1 - t^exponent) x0 (exponent 1: linear; above 1 it lingers near noise)",
      {ParamSpec::real("exponent", 2.0, "the exponent of alpha_t = t^exponent")
           .greater_than(0.0)
           .at_most(16.0)}});
  registrar.add_type<Path, StochasticInterpolant>(ComponentDecl{
      "stochastic_interpolant",
      "x_t = alpha_t x1 + sigma_t x0 + gamma_t z, z ~ N(0, I) (Albergo & Vanden-Eijnden 2023); not affine: "
      "velocity predictions and velocity solvers only",
      {ParamSpec::choice("interpolant", {"linear", "trig"}, "linear",
                         "alpha_t, sigma_t: t and 1 - t, or sin(pi t / 2) and cos(pi t / 2)"),
       ParamSpec::choice(
           "gamma", {"quadratic", "sqrt"}, "quadratic",
           "gamma_t = a t (1 - t), or sqrt(a t (1 - t)) (its derivative taken at t in [0.001, 0.999])"),
       ParamSpec::real("gamma_scale", 1.0, "a: the size of the latent noise gamma_t z (0: the affine path)")
           .at_least(0.0)
           .at_most(100.0)}});
}

}  // namespace

PATHLINE_PLUGIN("paths", "0.1.0", register_paths)
