// Objective `meanflow`: Mean Flows (Geng et al. 2025, "Mean Flows for One-step Generative
// Modeling"). The model takes an interval [t, s] (the time t and the condition extra kIntervalEnd =
// s) and predicts the average velocity over it,
//   u(x_t, t, s) = 1 / (s - t) int_t^s v(x_tau, tau) dtau,
// so that one step x_s = x_t + (s - t) u carries a point along the flow. Differentiating
// (s - t) u = int_t^s v in t gives the MeanFlow identity, the regression target:
//   u_target = v + (s - t) du/dt,  du/dt = (du/dx) v + du/dt  (a Jacobian-vector product along (v, 1, 0)),
// with the conditional velocity v of the drawn pair for the unknown marginal one and the target
// held fixed (stop-gradient). On the empty interval s = t it is flow matching on the velocity.
// Times run from noise (0) to data (1) here, so the interval runs forwards; the paper's r < t with
// noise at 1 is the same interval mirrored.
#include <cmath>

#include "objectives.hpp"

namespace pathline::objectives {

namespace {

class MeanFlow final : public Objective {
 public:
  MeanFlow(const Params& p, const BuildContext& ctx)
      : ratio_(p.real("interval_ratio")),
        power_(p.real("adaptive_power")),
        offset_(p.real("adaptive_offset")) {
    require_flow_parts(ctx, "meanflow");
    require_velocity(ctx, "meanflow", "the model predicts the average velocity");
    if (!ctx.time_sampler)
      throw InputError(
          "meanflow: the time sampler must be built first (the engine builds [objective] after it)");
    path_ = ctx.path;
    time_sampler_ = ctx.time_sampler;
  }

  std::vector<std::string> model_times() const override { return {kIntervalEnd}; }

  ObjectiveLoss loss(Model& model, const TrainingBatch& b, at::Generator& gen) override {
    const std::int64_t n = b.x1.size(0);
    const torch::Device device = b.x1.device();
    // Two times per sample from the [time_sampler], the interval between them; all but
    // interval_ratio of the samples get the empty interval s = t (the paper's best ratio: 25%).
    const torch::Tensor other = time_sampler_->sample(n, gen).to(device, b.t.scalar_type());
    torch::Tensor t = torch::minimum(b.t, other), s = torch::maximum(b.t, other);
    const torch::Tensor instant = (torch::rand({n}, gen) >= ratio_).to(device);
    s = torch::where(instant, t, s);
    const PathSample at = path_->sample(b.x0, b.x1, t, gen);

    const IntervalDerivative d = interval_derivative(model, at.x_t, t, s, at.velocity, b.condition);
    std::vector<std::int64_t> shape(static_cast<std::size_t>(at.x_t.dim()), 1);
    shape[0] = n;
    const torch::Tensor target =
        (at.velocity + (s - t).view(shape).to(at.velocity.scalar_type()) * d.du_dt).detach();
    torch::Tensor u = d.u;
    if (u.scalar_type() != target.scalar_type()) u = u.to(target.scalar_type());
    // The squared error of each sample, and the paper's adaptive weight 1 / (error + c)^p (held
    // fixed): p = 1 makes the loss about error / (error + c), robust to the large errors of long
    // intervals; p = 0 is the plain mean squared error.
    torch::Tensor error = (u - target).square().flatten(1).sum(1);
    if (power_ > 0) error = error / (error.detach() + offset_).pow(power_);
    const double dims = static_cast<double>(at.x_t[0].numel());
    return {power_ > 0 ? error.mean() : error.mean() / dims};
  }

 private:
  double ratio_, power_, offset_;
  std::shared_ptr<const Path> path_;
  std::shared_ptr<TimeSampler> time_sampler_;
};

}  // namespace

void register_meanflow(Registrar& registrar) {
  registrar.add_type<Objective, MeanFlow>(ComponentDecl{
      "meanflow",
      "MeanFlow (Geng et al. 2025): the model predicts the average velocity over an interval [t, s] "
      "(condition extra t_end = s), regressed on v + (s - t) du/dt, a Jacobian-vector product; sample "
      "with solver meanflow in 1 to a few steps",
      {ParamSpec::real("interval_ratio", 0.25,
                       "share of the samples trained on an interval s > t (the rest on s = t, the velocity)")
           .range(0.0, 1.0),
       ParamSpec::real(
           "adaptive_power", 1.0,
           "p of the adaptive loss weight 1 / (error + c)^p, held fixed (0: plain mean squared error)")
           .at_least(0.0),
       ParamSpec::real("adaptive_offset", 1e-3, "c of the adaptive loss weight").greater_than(0.0)},
      {{"solver", "meanflow"}}});
}

}  // namespace pathline::objectives
