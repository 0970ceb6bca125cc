// Stochastic sampling: an SDE with the same marginals p_t as the sampling ODE dx/dt = v(x, t).
// For any diffusion coefficient g_t >= 0,
//
//   dx = [v(x, t) + (g_t^2 / 2) grad log p_t(x)] dt + g_t dW,   t from noise (0) to data (1),
//
// has the marginals of the ODE: its Fokker-Planck equation adds (g^2 / 2) Laplace p and subtracts
// div((g^2 / 2) p grad log p), the same term (Ma et al. 2024, "SiT", sec. 2.3, eq. 5, written in our
// time direction; Albergo, Boffi & Vanden-Eijnden 2023, "Stochastic Interpolants", sec. 2.3). The noise
// corrects the errors the drift accumulates; g = 0 is the ODE.
#include <algorithm>
#include <cmath>
#include <string>

#include "solvers.hpp"

namespace pathline::solvers {
namespace {

// Euler-Maruyama (Kloeden & Platen 1992, sec. 9.1), on the engine's grid:
//   x_{n+1} = x_n + h [v + (g_n^2 / 2) s](x_n, t_n) + g_n sqrt(h) z,   z ~ N(0, I) from req.generator.
// One evaluation per step: the model is asked for the velocity, and the score follows from it on the
// affine path (the pair (x0_hat, x1_hat) it implies, s = -x0_hat / sigma_t). A step that ends where
// g = 0 takes neither noise nor the score term (a plain Euler step): the score is singular where
// sigma_t = 0, at the data end of paths that reach the data.
class EulerMaruyamaSolver : public Solver {
 public:
  enum class Diffusion { constant, sigma, linear };

  EulerMaruyamaSolver(const Params& p, const BuildContext&)
      : steps_(p.integer("steps")), scale_(p.real("scale")) {
    const std::string& form = p.string("diffusion");
    diffusion_ = form == "constant" ? Diffusion::constant
                 : form == "sigma"  ? Diffusion::sigma
                                    : Diffusion::linear;
  }

  std::int64_t grid_steps() const override { return steps_; }
  // The velocity, and from it x0_hat for the score term.
  std::vector<Quantity> quantities() const override { return {Quantity::velocity, Quantity::noise}; }

  torch::Tensor solve(VectorField& field, torch::Tensor x, const SolveRequest& req) override {
    if (!req.generator)
      throw Error("solver 'euler_maruyama': the solve request has no generator for the noise");
    for (std::size_t i = 0; i + 1 < req.times.size(); ++i)
      if (req.times[i + 1] < req.times[i])
        throw InputError(
            "solver 'euler_maruyama' integrates only from noise to data (increasing t), but its grid "
            "goes from " +
            time_text(req.times.front()) + " to " + time_text(req.times.back()) +
            "; use an ODE solver (euler, heun, rk4, dopri5, ...) to integrate backwards");
    x = x.clone();
    if (req.observer) req.observer(req.times.front(), x);
    for (std::size_t i = 0; i + 1 < req.times.size(); ++i) {
      const double t = req.times[i], t_next = req.times[i + 1], h = t_next - t;
      if (h > 0) {
        const ScalarCoefficients c = scalar_coefficients(field, t);
        auto velocity = field.velocity(x, t);
        const double g = diffusion(c, t);
        const double g_end = diffusion(scalar_coefficients(field, t_next), t_next);
        if (g == 0.0 || g_end == 0.0) {
          x = x + velocity * h;
        } else {
          // s = -x0_hat / sigma_t, x0_hat from (x, v) through the SDK's conversion (its floors included).
          const PathCoefficients coefficients{
              torch::full({1}, c.alpha, x.options()), torch::full({1}, c.sigma, x.options()),
              torch::full({1}, c.d_alpha, x.options()), torch::full({1}, c.d_sigma, x.options())};
          auto pair =
              pair_from_quantity(Quantity::velocity, velocity, x, coefficients.broadcast_to_rank(x.dim()));
          const double score_weight = g * g / (2.0 * std::max(c.sigma, kMinDivisor));
          auto noise =
              torch::randn(x.sizes(), *req.generator, x.options().device(torch::kCPU)).to(x.device());
          x = x + (velocity - pair.first * score_weight) * h + noise * (g * std::sqrt(h));
        }
      }
      if (req.observer) req.observer(t_next, x);
    }
    return x;
  }

 private:
  double diffusion(const ScalarCoefficients& c, double t) const {
    switch (diffusion_) {
      case Diffusion::constant:
        return scale_;
      case Diffusion::sigma:
        return scale_ * c.sigma;
      case Diffusion::linear:
        return scale_ * (1.0 - t);
    }
    return 0.0;
  }

  std::int64_t steps_;
  double scale_;
  Diffusion diffusion_;
};

}  // namespace

void register_sde(Registrar& registrar) {
  registrar.add_type<Solver, EulerMaruyamaSolver>(ComponentDecl{
      "euler_maruyama",
      "Euler-Maruyama on the SDE dx = [v + (g_t^2 / 2) score] dt + g_t dW with the ODE's marginals, noise to "
      "data only, 1 evaluation per step",
      {FixedStepSolver::steps_param(100),
       ParamSpec::choice("diffusion", {"constant", "sigma", "linear"}, "sigma",
                         "g_t: 'constant' = scale, 'sigma' = scale sigma_t (0 at the data end), 'linear' = "
                         "scale (1 - t)"),
       ParamSpec::real("scale", 1.0, "the diffusion's scale; 0 gives the Euler ODE step").at_least(0.0)}});
}

}  // namespace pathline::solvers
