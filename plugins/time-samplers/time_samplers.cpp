// Plugin "time-samplers": distributions of the training time t in [0, 1].
//
// Our t runs from noise (t = 0) to data (t = 1). Esser et al. 2024 ("Scaling Rectified Flow
// Transformers for High-Resolution Image Synthesis", SD3, sec. 3.1) write z_t = (1 - t) x + t eps,
// so their t is the noise level: t_ours = 1 - t_SD3. Each sampler below states its SD3 formula and
// the mapped one. (All three SD3 densities are symmetric about 1/2, so the mapping does not change
// the distribution, only the formula.) Every draw comes from the given generator only.
#include <cmath>

#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;

constexpr double kPi = 3.14159265358979323846;

torch::Tensor uniform(std::int64_t n, at::Generator& gen) {
  return torch::rand({n}, gen, torch::TensorOptions().dtype(torch::kFloat32));
}

// t ~ U[0, 1), the choice of Lipman et al. 2022.
class UniformTime : public pathline::TimeSampler {
 public:
  UniformTime(const Params&, const BuildContext&) {}

  torch::Tensor sample(std::int64_t n, at::Generator& gen) override { return uniform(n, gen); }
};

// Logit-normal sampling (SD3, sec. 3.1, "Logit-Normal Sampling"): t_SD3 = sigmoid(m + s z), z ~ N(0, 1). In
// our time t = 1 - sigmoid(m' + s z) = sigmoid(-m' - s z), and -z ~ z, so t = sigmoid(mean + std z) with mean
// = -m': a positive `mean` here favours the data side (SD3's negative m). Its density vanishes at both ends
// faster than any power, which also tames targets that blow up there (the score's -x0 / sigma_t at t -> 1:
// E[1 / (1 - t)^2] = 1 + 2 e^(mean + std^2/2) + e^(2 mean + 2 std^2)).
class LogitNormalTime : public pathline::TimeSampler {
 public:
  LogitNormalTime(const Params& p, const BuildContext&) : mean_(p.real("mean")), std_(p.real("std")) {}

  torch::Tensor sample(std::int64_t n, at::Generator& gen) override {
    torch::Tensor z = torch::randn({n}, gen, torch::TensorOptions().dtype(torch::kFloat32));
    return torch::sigmoid(z.mul_(std_).add_(mean_));
  }

 private:
  double mean_, std_;
};

// Mode sampling with heavy tails (SD3, sec. 3.1, "Mode Sampling with Heavy Tails"): u ~ U(0, 1),
//   t_SD3 = f_mode(u; s) = 1 - u - s (cos^2(pi u / 2) - 1 + u),
// so in our time t = 1 - f_mode(u; s) = u + s (cos^2(pi u / 2) - 1 + u). f_mode is monotone (a
// bijection of [0, 1]) for -1 <= s <= 2 / (pi - 2); s = 0 is uniform, s > 0 puts the mode at 1/2
// (density 1 / (1 - s (pi/2 - 1)) there) while keeping density 1 / (1 + s) at both ends. The
// distribution function is P(t <= g(u)) = u with g(u) = u + s (cos^2(pi u / 2) - 1 + u).
class ModeTime : public pathline::TimeSampler {
 public:
  ModeTime(const Params& p, const BuildContext&) : scale_(p.real("scale")) {}

  torch::Tensor sample(std::int64_t n, at::Generator& gen) override {
    torch::Tensor u = uniform(n, gen);
    torch::Tensor cos = torch::cos(u * (kPi / 2));
    torch::Tensor t = u + scale_ * (cos * cos - 1.0 + u);
    return t.clamp_(0.0, 1.0);  // only rounding can leave [0, 1]
  }

 private:
  double scale_;
};

// CosMap sampling (SD3, sec. 3.1, "CosMap"): u ~ U(0, 1), t_SD3 = f(u) = 1 - 1 / (tan(pi u / 2) + 1), the
// time change under which rectified flow's log-SNR matches the cosine schedule's. In our time t = 1 - f(u) =
// 1 / (tan(pi u / 2) + 1) = cos(pi u / 2) / (sin(pi u / 2) + cos(pi u / 2)), written without the tangent so
// that u near 1 is no trouble. Density 2 / (pi (1 - 2 t + 2 t^2)) (the engine's `cosmap` loss weight),
// distribution function P(t <= x) = 1 - (2/pi) atan((1 - x) / x).
class CosMapTime : public pathline::TimeSampler {
 public:
  CosMapTime(const Params&, const BuildContext&) {}

  torch::Tensor sample(std::int64_t n, at::Generator& gen) override {
    torch::Tensor angle = uniform(n, gen).mul_(kPi / 2);
    torch::Tensor cos = torch::cos(angle);
    return (cos / (torch::sin(angle) + cos)).clamp_(0.0, 1.0);
  }
};

// t ~ Beta(a, b), drawn as G_a / (G_a + G_b) from two standard gamma variates. a = b = 1 is uniform;
// b > 1 thins out the data end: Beta(1, 3) has density 3 (1 - t)^2, which on the linear path is
// 3 sigma_t^2, so sampling from it is importance sampling of Song et al. 2021's loss weight
// lambda(t) = sigma_t^2 (eq. 7): the choice that keeps the score parameterization's target -x0 / sigma_t
// of finite variance. (Black et al. 2024, pi0, likewise sample flow-matching times from a beta.)
class BetaTime : public pathline::TimeSampler {
 public:
  BetaTime(const Params& p, const BuildContext&) : a_(p.real("a")), b_(p.real("b")) {}

  torch::Tensor sample(std::int64_t n, at::Generator& gen) override {
    auto options = torch::TensorOptions().dtype(torch::kFloat64);
    torch::Tensor ga = at::_standard_gamma(torch::full({n}, a_, options), gen);
    torch::Tensor gb = at::_standard_gamma(torch::full({n}, b_, options), gen);
    return (ga / (ga + gb)).to(torch::kFloat32).clamp_(0.0, 1.0);
  }

 private:
  double a_, b_;
};

void register_time_samplers(pathline::Registrar& registrar) {
  using pathline::ComponentDecl;
  using pathline::TimeSampler;
  registrar.add_type<TimeSampler, UniformTime>(ComponentDecl{"uniform", "t ~ U[0, 1)", {}});
  registrar.add_type<TimeSampler, LogitNormalTime>(ComponentDecl{
      "logit_normal",
      "t = sigmoid(mean + std z), z ~ N(0, 1): SD3's logit-normal sampling (Esser et al. 2024)",
      {ParamSpec::real("mean", 0.0,
                       "mean of logit(t); > 0 favours the data end (SD3's m with the sign flipped)")
           .range(-10.0, 10.0),
       ParamSpec::real("std", 1.0, "standard deviation of logit(t) (SD3's s)")
           .greater_than(0.0)
           .at_most(10.0)}});
  registrar.add_type<TimeSampler, ModeTime>(ComponentDecl{
      "mode",
      "SD3's mode sampling with heavy tails: t = u + scale (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1)",
      {ParamSpec::real(
           "scale", 1.29,
           "SD3's s: 0 is uniform, > 0 concentrates t near 1/2; at most 2 / (pi - 2) to stay monotone")
           .range(-1.0, 2.0 / (kPi - 2.0))}});
  registrar.add_type<TimeSampler, CosMapTime>(
      ComponentDecl{"cosmap", "SD3's CosMap sampling: density 2 / (pi (1 - 2 t + 2 t^2)) on [0, 1]", {}});
  registrar.add_type<TimeSampler, BetaTime>(ComponentDecl{
      "beta",
      "t ~ Beta(a, b); Beta(1, 3) has density 3 sigma_t^2 on the linear path (score models' weighting)",
      {ParamSpec::real("a", 1.0, "first shape parameter; > 1 thins out the noise end t = 0")
           .greater_than(0.0)
           .at_most(100.0),
       ParamSpec::real("b", 1.0, "second shape parameter; > 1 thins out the data end t = 1")
           .greater_than(0.0)
           .at_most(100.0)}});
}

}  // namespace

PATHLINE_PLUGIN("time-samplers", "0.1.0", register_time_samplers)
