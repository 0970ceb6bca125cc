// Plugin "models-empirical": the exact marginal field of a finite data set, a model with nothing to
// learn. It is the field a perfectly trained network would converge to on those points, and serves
// as a reference: for solvers, for the FM = CFM gradient theorem, for memorisation.
//
// For data points x1_1..x1_N (uniform weights) and an affine Gaussian path
// p_t(x | x1) = N(x; alpha_t x1, sigma_t^2 I), the marginal velocity is the posterior-weighted
// average of conditional velocities (docs/concepts.md; Lipman et al. 2022, eq. 8):
//   w_i(x, t) = softmax_i( -||x - alpha_t x1_i||^2 / (2 sigma_t^2) )
//   u_t(x)    = sum_i w_i u_t(x | x1_i),   u_t(x | x1) = alpha'_t x1 + sigma'_t (x - alpha_t x1) / sigma_t.
// Because u_t(x | x1) is affine in x1, this is u_t(x) = alpha'_t m + sigma'_t (x - alpha_t m) / sigma_t
// with m = E[x1 | x_t = x] = sum_i w_i x1_i, the posterior mean (the exact denoiser). So one softmax
// and one matrix product per batch of x give every quantity: data m, noise (x - alpha m) / sigma,
// score -(x - alpha m) / sigma^2, velocity as above.
//
// Near t = 1 (sigma_t -> 0) the posterior collapses onto the nearest point and the field is
// singular: a trajectory runs straight into its point with velocity (x1 - x) / (1 - t), and at
// t = 1 itself the velocity depends on how the point was approached, not on x alone. sigma_t is
// clamped to min_sigma so that nothing is infinite, but a solver stage evaluated at t = 1 gets a
// meaningless value there. Sample with [sample] t_end slightly below 1 (0.999 leaves samples within
// about 0.001 |x1 - x0| of their points), or finish with predicts = "data", the exact denoiser.
//
// On labelled data the points keep their labels, and a row conditioned on class k gets the exact
// field of the class: the same average over the points of class k only, i.e. the marginal field of
// q(x1 | k), which is what a perfectly trained conditional model learns. The null label (and no
// labels at all) averages over every point: the unconditional field.
#include <ATen/CPUGeneratorImpl.h>

#include <limits>
#include <string>

#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;
using pathline::Quantity;

Quantity parse_quantity(const std::string& name) {
  for (Quantity q : {Quantity::velocity, Quantity::noise, Quantity::data, Quantity::score})
    if (name == pathline::to_string(q)) return q;
  throw pathline::InputError("empirical: unknown quantity '" + name + "'");
}

class EmpiricalModel : public pathline::Model {
 public:
  EmpiricalModel(const Params& p, const BuildContext& ctx)
      : path_(ctx.path),
        output_(parse_quantity(p.string("predicts"))),
        batch_size_(p.integer("batch_size")),
        min_sigma_(p.real("min_sigma")) {
    if (!ctx.dataset) throw pathline::InputError("empirical: needs the pipeline's data set, none was built");
    if (!path_) throw pathline::InputError("empirical: needs the pipeline's path, none was built");
    if (!path_->affine())
      throw pathline::InputError(
          "empirical: its closed-form field holds for affine paths (x_t = alpha_t x1 + sigma_t x0) only, "
          "and the pipeline's path is not affine");
    // The points are drawn once, from a generator of their own seeded from [run] seed, so that the
    // same config always gives the same field.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(ctx.seed ^ 0x5eed5eed5eed5eedULL);
    const std::int64_t n = p.integer("n_points");
    pathline::Batch drawn = ctx.dataset->sample(n, gen);
    const torch::Tensor& points = drawn.x;
    if (points.dim() < 1 || points.size(0) != n)
      throw pathline::Error("empirical: the data set returned " +
                            std::to_string(points.dim() ? points.size(0) : 0) + " samples, " +
                            std::to_string(n) + " were asked for");
    points_ = register_buffer("points", points.reshape({n, -1}).to(torch::kDouble).contiguous());
    if (drawn.labels.defined()) {
      if (drawn.labels.numel() != n)
        throw pathline::Error("empirical: the data set returned " + std::to_string(drawn.labels.numel()) +
                              " labels for " + std::to_string(n) + " samples");
      labels_ = register_buffer("labels", drawn.labels.reshape({n}).to(torch::kInt64).contiguous());
      class_counts_ = torch::bincount(labels_.clamp_min(0));
    }
  }

  bool trainable() const override { return false; }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t,
                        const pathline::Condition& condition) override {
    const std::int64_t batch = x.size(0);
    const torch::Tensor points = points_.to(x.device(), torch::kDouble);
    const std::int64_t dim = points.size(1);
    if (x.numel() != batch * dim)
      throw pathline::Error("empirical: x has " +
                            std::to_string(x.numel() / std::max<std::int64_t>(batch, 1)) +
                            " values per sample, the data " + std::to_string(dim));
    torch::Tensor xf = x.reshape({batch, dim}).to(torch::kDouble);
    torch::Tensor tt = t.to(x.device(), torch::kDouble).reshape({-1});
    if (tt.numel() == 1) tt = tt.expand({batch});
    if (tt.numel() != batch)
      throw pathline::Error("empirical: t must hold one time per sample or a single time");

    pathline::PathCoefficients c = path_->coefficients(tt);
    auto as_column = [](const torch::Tensor& k) { return k.to(torch::kDouble).reshape({-1, 1}); };
    c = {as_column(c.alpha), as_column(c.sigma).clamp_min(min_sigma_), as_column(c.d_alpha),
         as_column(c.d_sigma)};
    const torch::Tensor half_sq_norms = points.square().sum(1).mul_(0.5).unsqueeze(0);  // [1, N]
    const torch::Tensor wanted = requested_classes(condition, batch, x.device());       // [B] or undefined
    const torch::Tensor point_labels =
        labels_.defined() ? labels_.to(x.device()).unsqueeze(0) : torch::Tensor();

    // m = E[x1 | x] by rows of x, batch_size at a time: memory batch_size x N. The log weights drop
    // the ||x||^2 term of -||x - alpha x1_i||^2 / (2 sigma^2), which is the same for every i.
    std::vector<torch::Tensor> means;
    for (std::int64_t start = 0; start < batch; start += batch_size_) {
      const std::int64_t rows = std::min(batch_size_, batch - start);
      auto alpha = c.alpha.narrow(0, start, rows), sigma = c.sigma.narrow(0, start, rows);
      auto logits = torch::addmm(half_sq_norms * -alpha, xf.narrow(0, start, rows), points.t())
                        .mul_(alpha / sigma.square());
      if (wanted.defined()) {
        // A row of class k averages over the points of class k only: the others get weight 0.
        auto row_class = wanted.narrow(0, start, rows).unsqueeze(1);
        logits.masked_fill_((row_class >= 0) & (point_labels != row_class),
                            -std::numeric_limits<double>::infinity());
      }
      means.push_back(torch::softmax(logits, 1).mm(points));
    }
    torch::Tensor x1_hat = means.size() == 1 ? means[0] : torch::cat(means);
    torch::Tensor x0_hat = (xf - c.alpha * x1_hat) / c.sigma;
    return pathline::quantity_from_pair(output_, x0_hat, x1_hat, c).to(x.scalar_type()).view(x.sizes());
  }

 private:
  // The labels rows ask for, checked, as [B] int64 on `device`; undefined when every row is
  // unconditional (no labels, or only the null label), which averages over every point.
  torch::Tensor requested_classes(const pathline::Condition& condition, std::int64_t batch,
                                  const torch::Device& device) const {
    if (!condition.labels.defined()) return {};
    if (condition.labels.dim() != 1 || condition.labels.size(0) != batch)
      throw pathline::Error("empirical: the condition holds " + std::to_string(condition.labels.numel()) +
                            " labels for a batch of " + std::to_string(batch) + " samples");
    const torch::Tensor wanted = condition.labels.to(device, torch::kInt64);
    const torch::Tensor conditional = wanted >= 0;  // kNullLabel (-1) asks for every point
    if (!conditional.any().item<bool>()) return {};
    if (!labels_.defined())
      throw pathline::Error("empirical: asked for a class, but the data set's points carry no labels");
    // A class none of the n_points drawn belongs to would leave a row with nothing to average.
    const torch::Tensor asked = wanted.masked_select(conditional).cpu();
    const std::int64_t classes = class_counts_.size(0);
    const torch::Tensor absent =
        (asked >= classes) | (class_counts_.index_select(0, asked.clamp_max(classes - 1)) == 0);
    if (absent.any().item<bool>())
      throw pathline::InputError("empirical: none of the " + std::to_string(labels_.size(0)) +
                                 " points drawn is of class " +
                                 std::to_string(asked.masked_select(absent)[0].item<std::int64_t>()) +
                                 " (is it a class of the data set?); raise n_points");
    return wanted;
  }

  std::shared_ptr<const pathline::Path> path_;
  Quantity output_;
  std::int64_t batch_size_;
  double min_sigma_;
  torch::Tensor points_;        // [N, D] float64, the data points flattened
  torch::Tensor labels_;        // [N] int64, the points' labels; undefined for unlabelled data
  torch::Tensor class_counts_;  // points per class, on the CPU
};

void register_empirical(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Model, EmpiricalModel>(pathline::ComponentDecl{
      "empirical",
      "exact marginal field of n_points data points drawn once (posterior-weighted average of "
      "conditional velocities; on labelled data, of the points of the class asked for); needs no training; "
      "set `predicts` to the [parameterization] type",
      {ParamSpec::integer("n_points", 1000, "data points drawn once from the data set at build time")
           .at_least(1),
       ParamSpec::choice("predicts", {"velocity", "noise", "data", "score"}, "velocity",
                         "what the output is; must equal the pipeline's [parameterization] type, which "
                         "converts it (the model cannot see the parameterization)"),
       ParamSpec::integer("batch_size", 1024,
                          "rows of x evaluated at once (memory: batch_size x n_points doubles)")
           .at_least(1),
       ParamSpec::real("min_sigma", 1e-4,
                       "sigma_t is clamped to at least this, so the field stays finite at t = 1; it is "
                       "singular there all the same: sample with [sample] t_end < 1, e.g. 0.999")
           .greater_than(0)
           .at_most(1)}});
}

}  // namespace

PATHLINE_PLUGIN("models-empirical", "0.1.0", register_empirical)
