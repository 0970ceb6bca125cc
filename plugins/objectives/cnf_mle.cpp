// Objective `cnf_mle`: a continuous normalizing flow trained by maximum likelihood (Chen et al.
// 2018, "Neural Ordinary Differential Equations"; Grathwohl et al. 2019, FFJORD), the lecture's foil
// to flow matching. Each step integrates the data batch from t = 1 back to t = 0 through the model's
// velocity, with the change of log-density
//   d/dt log p_t(x_t) = -div v(x_t, t),  so  log p_1(x1) = log p_0(x0) - int_0^1 div v(x_t, t) dt,
// and minimises the negative log-likelihood per dimension, with gradients through every solver
// step (discretise, then optimise). The divergence is exact (one backward pass per dimension) for
// small data and Hutchinson's estimate e^T (dv/dx) e with one Rademacher e per step otherwise. The
// solve is fixed-step (euler, midpoint, rk4) or adaptive (dopri5); the model evaluations of each
// step are reported as the statistic "nfe". The path's time runs as in sampling, from the source
// (t = 0) to the data; only the model and the source's density enter the loss.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "objectives.hpp"

namespace pathline::objectives {

namespace {

// An explicit Runge-Kutta tableau: nodes c, stage weights a (lower triangle), weights b, and for
// an embedded pair the weights of the lower-order solution.
struct Tableau {
  std::vector<double> c;
  std::vector<std::vector<double>> a;
  std::vector<double> b, b_low;
  int order = 1;
};

const Tableau& tableau(const std::string& name) {
  static const Tableau euler{{0.0}, {{}}, {1.0}, {}, 1};
  static const Tableau midpoint{{0.0, 0.5}, {{}, {0.5}}, {0.0, 1.0}, {}, 2};
  static const Tableau rk4{{0.0, 0.5, 0.5, 1.0},
                           {{}, {0.5}, {0.0, 0.5}, {0.0, 0.0, 1.0}},
                           {1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6},
                           {},
                           4};
  // Dormand & Prince 1980, order 5 with an embedded order 4.
  static const Tableau dopri5{
      {0.0, 1.0 / 5, 3.0 / 10, 4.0 / 5, 8.0 / 9, 1.0, 1.0},
      {{},
       {1.0 / 5},
       {3.0 / 40, 9.0 / 40},
       {44.0 / 45, -56.0 / 15, 32.0 / 9},
       {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729},
       {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656},
       {35.0 / 384, 0.0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84}},
      {35.0 / 384, 0.0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84, 0.0},
      {5179.0 / 57600, 0.0, 7571.0 / 16695, 393.0 / 640, -92097.0 / 339200, 187.0 / 2100, 1.0 / 40},
      5};
  if (name == "euler") return euler;
  if (name == "midpoint") return midpoint;
  if (name == "rk4") return rk4;
  return dopri5;
}

class CnfMle final : public Objective {
 public:
  CnfMle(const Params& p, const BuildContext& ctx)
      : solver_(p.string("solver")),
        steps_(p.integer("steps")),
        max_steps_(p.integer("max_steps")),
        rtol_(p.real("rtol")),
        atol_(p.real("atol")) {
    require_flow_parts(ctx, "cnf_mle");
    require_velocity(ctx, "cnf_mle", "the likelihood integrates the model's velocity");
    const DataInfo& flow = ctx.flow_space();
    if (flow.shape.empty()) throw InputError("cnf_mle: the data shape is unknown");
    dims_ = flow.numel();
    const std::string divergence = p.string("divergence");
    exact_ = divergence == "exact" || (divergence == "auto" && dims_ <= 16);
    if (!ctx.source) throw InputError("cnf_mle: the source must be built first");
    source_ = ctx.source;
    std::vector<std::int64_t> one = {1};
    one.insert(one.end(), flow.shape.begin(), flow.shape.end());
    if (!source_->log_prob(torch::zeros(one)).defined())
      throw InputError(
          "cnf_mle: the [source] has no density (Dataset::log_prob), and the likelihood starts from it; use "
          "the gaussian source");
    // The flow starts from sigma_0 x0 (a variance-exploding path's sigma_max): log p_0 is the
    // source's density of x / sigma_0, less D log sigma_0.
    const PathCoefficients c0 = ctx.path->coefficients(torch::zeros({1}, torch::kFloat64));
    sigma0_ = c0.sigma.item<double>();
    if (!(sigma0_ > 0.0) || std::abs(c0.alpha.item<double>()) > 1e-6)
      throw InputError(fmt::format(
          "cnf_mle: the path must start at the scaled source (alpha_0 = 0, sigma_0 > 0), not alpha_0 = {}, "
          "sigma_0 = {}",
          c0.alpha.item<double>(), sigma0_));
  }

  std::vector<std::string> statistics() const override { return {"nfe"}; }

  ObjectiveLoss loss(Model& model, const TrainingBatch& b, at::Generator& gen) override {
    const std::int64_t n = b.x1.size(0);
    evaluations_ = 0;
    // The data, a leaf the divergence differentiates through; every state after it depends on it.
    torch::Tensor x = b.x1.detach().clone().requires_grad_(true);
    if (!exact_)  // Hutchinson: one Rademacher probe for the whole solve (FFJORD)
      probe_ = torch::randint(0, 2, x.sizes(), gen, torch::kFloat32)
                   .mul_(2)
                   .sub_(1)
                   .to(x.options().requires_grad(false));
    torch::Tensor delta = torch::zeros({n}, x.options().requires_grad(false));
    integrate(model, b.condition, x, delta);
    // log p_1(x1) = log p_0(x(0)) + int_1^0 div v dt (delta holds that integral).
    torch::Tensor log_p0 = source_->log_prob(sigma0_ == 1.0 ? x : x / sigma0_);
    if (sigma0_ != 1.0) log_p0 = log_p0 - static_cast<double>(dims_) * std::log(sigma0_);
    const torch::Tensor log_p1 = log_p0.to(torch::kFloat64) + delta.to(torch::kFloat64);
    const torch::Tensor loss = (-log_p1.mean() / static_cast<double>(dims_)).to(torch::kFloat32);
    return {loss, {{"nfe", static_cast<double>(evaluations_)}}};
  }

 private:
  // The velocity at (x, t) and its divergence, [B].
  std::pair<torch::Tensor, torch::Tensor> field(Model& model, const Condition& condition,
                                                const torch::Tensor& x, double t) {
    ++evaluations_;
    torch::Tensor v =
        model.forward(x, torch::full({x.size(0)}, t, x.options().requires_grad(false)), condition);
    if (v.scalar_type() != x.scalar_type()) v = v.to(x.scalar_type());
    torch::Tensor div;
    if (exact_) {
      const torch::Tensor flat = v.flatten(1);
      std::vector<torch::Tensor> parts;
      for (std::int64_t i = 0; i < dims_; ++i) {
        torch::Tensor g = torch::autograd::grad({flat.select(1, i).sum()}, {x}, {}, /*retain_graph=*/true,
                                                /*create_graph=*/true)[0];
        parts.push_back(g.flatten(1).select(1, i));
      }
      div = torch::stack(parts, 1).sum(1);
    } else {
      torch::Tensor g =
          torch::autograd::grad({v}, {x}, {probe_}, /*retain_graph=*/true, /*create_graph=*/true)[0];
      div = (g * probe_).flatten(1).sum(1);
    }
    return {v, div};
  }

  // One Runge-Kutta step of (x, delta) from t by h; returns the new state and, for an embedded pair,
  // the error estimate's norm (scaled by the tolerances; 0 without one).
  double rk_step(Model& model, const Condition& condition, const Tableau& tab, torch::Tensor& x,
                 torch::Tensor& delta, double t, double h) {
    std::vector<torch::Tensor> kx, kd;
    for (std::size_t i = 0; i < tab.c.size(); ++i) {
      torch::Tensor xi = x, di;
      for (std::size_t j = 0; j < i; ++j)
        if (tab.a[i][j] != 0.0) xi = xi + (h * tab.a[i][j]) * kx[j];
      auto [v, div] = field(model, condition, xi, t + tab.c[i] * h);
      kx.push_back(v);
      kd.push_back(div);
    }
    torch::Tensor x_new = x, d_new = delta;
    for (std::size_t i = 0; i < tab.b.size(); ++i) {
      if (tab.b[i] == 0.0) continue;
      x_new = x_new + (h * tab.b[i]) * kx[i];
      d_new = d_new + (h * tab.b[i]) * kd[i];
    }
    double error = 0.0;
    if (!tab.b_low.empty()) {
      torch::NoGradGuard no_grad;
      torch::Tensor ex = torch::zeros_like(x), ed = torch::zeros_like(delta);
      for (std::size_t i = 0; i < tab.b.size(); ++i) {
        const double w = h * (tab.b[i] - tab.b_low[i]);
        if (w == 0.0) continue;
        ex = ex + w * kx[i].detach();
        ed = ed + w * kd[i].detach();
      }
      auto scaled = [&](const torch::Tensor& e, const torch::Tensor& y0, const torch::Tensor& y1) {
        const torch::Tensor tol = atol_ + rtol_ * torch::maximum(y0.detach().abs(), y1.detach().abs());
        return (e / tol).square().sum().item<double>();
      };
      const double total = static_cast<double>(ex.numel() + ed.numel());
      error = std::sqrt((scaled(ex, x, x_new) + scaled(ed, delta, d_new)) / total);
    }
    x = x_new;
    delta = d_new;
    return error;
  }

  // From t = 1 to t = 0, the fixed grid of `steps` or dopri5's accepted steps.
  void integrate(Model& model, const Condition& condition, torch::Tensor& x, torch::Tensor& delta) {
    const Tableau& tab = tableau(solver_);
    if (tab.b_low.empty()) {
      const double h = -1.0 / static_cast<double>(steps_);
      for (std::int64_t k = 0; k < steps_; ++k)
        rk_step(model, condition, tab, x, delta, 1.0 + static_cast<double>(k) * h, h);
      return;
    }
    double t = 1.0, h = -1.0 / static_cast<double>(steps_);
    for (std::int64_t taken = 0; t > 0.0;) {
      if (taken >= max_steps_)
        throw Error(
            fmt::format("cnf_mle: dopri5 needed more than max_steps = {} steps to integrate the batch "
                        "(rtol {}, atol {}); raise max_steps or the tolerances",
                        max_steps_, rtol_, atol_));
      h = std::max(h, -t);  // land on t = 0
      torch::Tensor x_try = x, d_try = delta;
      const double error = rk_step(model, condition, tab, x_try, d_try, t, h);
      ++taken;
      const double factor =
          std::isfinite(error)
              ? std::clamp(0.9 * std::pow(std::max(error, 1e-10), -1.0 / tab.order), 0.2, 5.0)
              : 0.2;
      if (std::isfinite(error) && error <= 1.0) {
        x = x_try;
        delta = d_try;
        t += h;
        if (t < 1e-12) t = 0.0;
      }
      h *= factor;
    }
  }

  std::string solver_;
  std::int64_t steps_, max_steps_;
  double rtol_, atol_;
  std::int64_t dims_ = 0;
  bool exact_ = true;
  double sigma0_ = 1.0;
  std::shared_ptr<Dataset> source_;
  torch::Tensor probe_;
  std::int64_t evaluations_ = 0;
};

}  // namespace

void register_cnf_mle(Registrar& registrar) {
  registrar.add_type<Objective, CnfMle>(ComponentDecl{
      "cnf_mle",
      "maximum likelihood of a continuous normalizing flow (Chen et al. 2018, FFJORD): the data integrated "
      "back to the source through the model with the change of log-density, gradients through the solve; "
      "reports the model evaluations per step (nfe)",
      {ParamSpec::choice("solver", {"euler", "midpoint", "rk4", "dopri5"}, "rk4",
                         "the solver inside each training step: fixed-step euler, midpoint, rk4, or adaptive "
                         "dopri5 (Dormand-Prince 5(4))"),
       ParamSpec::integer("steps", 8, "steps from t = 1 to 0 (dopri5: its first step is 1 / steps)")
           .at_least(1),
       ParamSpec::choice("divergence", {"auto", "exact", "hutchinson"}, "auto",
                         "exact (one backward pass per dimension), Hutchinson's estimate with one "
                         "Rademacher probe per step, or auto: exact up to 16 dimensions"),
       ParamSpec::real("rtol", 1e-5, "dopri5's relative tolerance").greater_than(0.0),
       ParamSpec::real("atol", 1e-5, "dopri5's absolute tolerance").greater_than(0.0),
       ParamSpec::integer("max_steps", 1000, "dopri5's most steps (accepted and rejected) per batch")
           .at_least(1)}});
}

}  // namespace pathline::objectives
