// Objective `flow_matching`: conditional flow matching (Lipman et al. 2022), the regression of the
// model's prediction at (x_t, t) onto the parameterization's target for the drawn pair,
//   E w(t) |f(x_t, t) - target(x0, x1, t)|^2,
// with w from [train] loss_weighting. On a path that draws its own x_t the target is the draw's
// velocity. One model evaluation per sample, no simulation.
#include "objectives.hpp"

namespace pathline::objectives {

namespace {

class FlowMatching final : public Objective {
 public:
  FlowMatching(const Params& p, const BuildContext& ctx) {
    (void)p;
    require_flow_parts(ctx, "flow_matching");
    path_ = ctx.path;
    parameterization_ = ctx.parameterization;
  }

  ObjectiveLoss loss(Model& model, const TrainingBatch& b, at::Generator& gen) override {
    (void)gen;
    // An affine path's targets come from the parameterization; any other path's draw carries its
    // velocity target (its pipelines predict the velocity: the engine checks).
    const torch::Tensor goal =
        path_->affine() ? parameterization_->target(b.x0, b.x1, b.coefficients) : b.at.velocity;
    torch::Tensor output = model.forward(b.at.x_t, b.t, b.condition);
    if (output.scalar_type() != goal.scalar_type()) output = output.to(goal.scalar_type());
    return {b.weight.defined() ? (b.weight * (output - goal).square()).mean()
                               : torch::mse_loss(output, goal)};
  }

 private:
  std::shared_ptr<const Path> path_;
  std::shared_ptr<const Parameterization> parameterization_;
};

}  // namespace

void register_flow_matching(Registrar& registrar) {
  registrar.add_type<Objective, FlowMatching>(ComponentDecl{
      "flow_matching",
      "conditional flow matching: regress the model's prediction at (x_t, t) on the parameterization's "
      "target for the drawn pair, weighted by [train] loss_weighting; one evaluation per sample",
      {}});
}

}  // namespace pathline::objectives
