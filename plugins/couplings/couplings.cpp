// Plugin "couplings": how noise and data minibatches are paired for training.
//
//   independent   rows paired as drawn (Lipman et al. 2022)
//   minibatch_ot  the exact optimal assignment under squared Euclidean cost (OT-CFM, Tong et al.
//                 2023; Pooladian et al. 2023), solved by an eps-scaling auction for the
//                 potentials, finished exactly by shortest augmenting paths (Hungarian method);
//                 the solver lives in plugins/common/assignment.hpp, shared with `wasserstein`
//   sinkhorn      entropic OT (Cuturi 2013), stable for small eps, then one noise row drawn per
//                 data row from the plan; the plan lives in plugins/common/sinkhorn.hpp
//   reflow        each noise row paired with a trained teacher flow's ODE solution from it
//                 (rectified flow, Liu et al. 2023): the student learns straighter paths
//
// Both OT couplings flatten samples to [B, D] for the cost, so images work like points. Every
// coupling pairs whole rows: a label moves with the row it belongs to.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/assignment.hpp"
#include "common/sinkhorn.hpp"
#include "pathline/plugin.hpp"

namespace {

using pathline::Batch;
using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;
using pathline_plugins::assignment::solve_assignment;
using pathline_plugins::sinkhorn::entropic_plan;

// The independent coupling q(x0) q(x1) of conditional flow matching (Lipman et al. 2022): row i of
// the noise is paired with row i of the data, as drawn.
class IndependentCoupling : public pathline::Coupling {
 public:
  IndependentCoupling(const Params&, const BuildContext&) {}

  std::pair<Batch, Batch> couple(Batch source, Batch target, at::Generator&) override {
    return {std::move(source), std::move(target)};
  }
};

// The rows `rows` of a batch, labels included.
Batch select_rows(const Batch& batch, const torch::Tensor& rows) {
  Batch out;
  out.x = batch.x.index_select(0, rows.to(batch.x.device()));
  if (batch.labels.defined()) out.labels = batch.labels.index_select(0, rows.to(batch.labels.device()));
  return out;
}

// The squared Euclidean cost C[i][j] = ||x0_i - x1_j||^2 between flattened rows, as a contiguous
// float64 matrix on the CPU. With `centre`, each batch is first moved to mean zero: that changes
// C[i][j] by a term in i plus a term in j only, so no optimal assignment changes, while the cost
// range (the auction's scale) and the rounding of distant clouds shrink.
torch::Tensor squared_cost(const std::string& who, const torch::Tensor& x0, const torch::Tensor& x1,
                           bool centre = false) {
  if (x0.dim() == 0 || x1.dim() == 0 || x0.size(0) != x1.size(0))
    throw pathline::InputError(
        who + ": the source (x0) and target (x1) batches must have the same number of rows, got " +
        std::to_string(x0.dim() ? x0.size(0) : 0) + " and " + std::to_string(x1.dim() ? x1.size(0) : 0));
  torch::NoGradGuard no_grad;
  auto a = x0.reshape({x0.size(0), -1}).to(torch::kDouble);
  auto b = x1.reshape({x1.size(0), -1}).to(torch::kDouble);
  if (a.size(1) != b.size(1))
    throw pathline::InputError(
        who + ": source samples of " + std::to_string(a.size(1)) + " values and target samples of " +
        std::to_string(b.size(1)) +
        " values cannot be paired; the [source] must draw samples shaped like the [dataset]'s");
  if (centre) {
    a = a - a.mean(0, true);
    b = b - b.mean(0, true);
  }
  auto cost = torch::cdist(a, b).square_().to(torch::kCPU).contiguous();
  if (!torch::isfinite(cost).all().item<bool>())
    throw pathline::Error(who + ": the batch holds non-finite values (did training diverge?)");
  return cost;
}

// The source rows permuted so that sum_i ||x0_perm(i) - x1_i||^2 is minimal (exact assignment).
std::pair<Batch, Batch> exact_ot_pairing(const std::string& who, Batch source, Batch target) {
  auto cost = squared_cost(who, source.x, target.x, /*centre=*/true);
  const std::int64_t n = cost.size(0);
  if (n <= 1) return {std::move(source), std::move(target)};
  std::vector<std::int64_t> row_of_col = solve_assignment(cost.data_ptr<double>(), n, who);
  return {select_rows(source, torch::tensor(row_of_col, torch::kLong)), std::move(target)};
}

// Mini-batch optimal transport (Tong et al. 2023, "Improving and generalizing flow-based generative
// models with minibatch optimal transport"; Pooladian et al. 2023): within each batch, noise rows
// are permuted so that the total squared distance sum_i ||x0_perm(i) - x1_i||^2 is minimal. The
// straight paths between optimal pairs never meet at the same time t, so the learned field is
// closer to straight and few-step sampling is more accurate.
class MinibatchOtCoupling : public pathline::Coupling {
 public:
  MinibatchOtCoupling(const Params&, const BuildContext&) {}

  std::pair<Batch, Batch> couple(Batch source, Batch target, at::Generator&) override {
    return exact_ot_pairing("minibatch_ot", std::move(source), std::move(target));
  }
};

// Conditional optimal transport for discrete conditions (C2OT, Cheng & Schwing 2025, "The Curse of
// Conditions"). Minibatch OT ignores labels: the noise it pairs with a class leans towards that
// class's data, while sampling starts every class from the full Gaussian, a gap between training
// and sampling. Here source row i first goes with data row i, as independent pairing does (each
// class gets an unskewed share of the noise), and the exact assignment then permutes noise only
// among the rows of the same class: infinite cost across classes. Unlabelled data: minibatch OT.
class ConditionalOtCoupling : public pathline::Coupling {
 public:
  ConditionalOtCoupling(const Params&, const BuildContext&) {}

  std::pair<Batch, Batch> couple(Batch source, Batch target, at::Generator&) override {
    const std::int64_t n = source.x.dim() ? source.x.size(0) : 0;
    if (!target.labels.defined())
      return exact_ot_pairing("conditional_ot", std::move(source), std::move(target));
    torch::Tensor labels = target.labels.to(torch::kCPU, torch::kLong);
    std::vector<std::int64_t> perm(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) perm[static_cast<std::size_t>(i)] = i;
    torch::Tensor classes = std::get<0>(at::_unique(labels, /*sorted=*/true));
    for (std::int64_t k = 0; k < classes.size(0); ++k) {
      torch::Tensor rows = torch::nonzero(labels == classes[k]).flatten();
      const std::int64_t m = rows.size(0);
      if (m <= 1) continue;
      auto cost = squared_cost("conditional_ot", source.x.index_select(0, rows.to(source.x.device())),
                               target.x.index_select(0, rows.to(target.x.device())), /*centre=*/true);
      std::vector<std::int64_t> row_of_col = solve_assignment(cost.data_ptr<double>(), m, "conditional_ot");
      const auto* r = rows.data_ptr<std::int64_t>();
      for (std::int64_t j = 0; j < m; ++j)
        perm[static_cast<std::size_t>(r[j])] = r[row_of_col[static_cast<std::size_t>(j)]];
    }
    return {select_rows(source, torch::tensor(perm, torch::kLong)), std::move(target)};
  }
};

// Entropic optimal transport (Cuturi 2013): the plan P minimising <P, C> - eps H(P) with uniform
// marginals, by Sinkhorn iterations: as a matrix scaling of the kernel exp(-C / eps) while that fits
// in double range (2 matrix-vector products per iteration), otherwise on the dual potentials in log
// space (Peyre & Cuturi 2019, "Computational Optimal Transport", sec. 4.4), so that small eps does
// not underflow. The pairing then keeps every data row and draws its noise row from the plan's
// column, i ~ P[:, j] / sum P[:, j] (with the training generator): noise rows may repeat or be left
// out, as in torchcfm's sampling from the plan. eps -> 0 approaches minibatch_ot; eps -> inf gives
// independent pairs.
class SinkhornCoupling : public pathline::Coupling {
 public:
  SinkhornCoupling(const Params& p, const BuildContext&)
      : reg_(p.real("reg")),
        relative_(p.string("reg_scale") == "mean_cost"),
        iterations_(p.integer("iterations")),
        tolerance_(p.real("tolerance")) {}

  std::pair<Batch, Batch> couple(Batch source, Batch target, at::Generator& gen) override {
    auto cost = squared_cost("sinkhorn", source.x, target.x);
    const std::int64_t n = cost.size(0);
    if (n <= 1) return {std::move(source), std::move(target)};
    torch::NoGradGuard no_grad;
    double eps = reg_;
    if (relative_) eps *= cost.mean().item<double>();
    if (!(eps > 0)) eps = reg_;  // every pairing costs the same (all rows equal): any plan is optimal

    // Row j of `weights`: P[:, j] up to a constant, the distribution of the noise row for data row j.
    torch::Tensor weights = entropic_plan(cost, eps, iterations_, tolerance_).column_weights();
    auto rows = torch::multinomial(weights, 1, true, gen).squeeze(1);
    return {select_rows(source, rows), std::move(target)};
  }

 private:
  double reg_;
  bool relative_;
  std::int64_t iterations_;
  double tolerance_;
};

// Reflow (Liu et al. 2023, "Flow Straight and Fast"): the pairs are (x0, T(x0)), T the teacher
// run's sampler (its solver, time grid and guidance) from x0, asked for the data row's label. The
// teacher's flow crosses no paths, so the student trained on its pairs learns nearly straight ones:
// one or two Euler steps then land close to where the teacher's many do. Fresh pairs every batch
// (teacher evaluations in every step), or `pairs` of them generated once on first use (from the
// [source], with a fixed stream of the run's seed; labels every class in turn) and drawn at random.
// The student starts from the teacher's weights (initial_weights) unless told otherwise.
class ReflowCoupling : public pathline::Coupling {
 public:
  ReflowCoupling(const Params& p, const BuildContext& ctx)
      : pairs_(p.integer("pairs")), start_from_teacher_(p.boolean("start_from_teacher")), seed_(ctx.seed) {
    const std::string dir = p.string("teacher");
    if (dir.empty())
      throw pathline::InputError(
          "reflow: set teacher = \"RUN_DIR\", a trained flow run whose samples the student learns to reach");
    if (!ctx.open_run)
      throw pathline::InputError("reflow: this context cannot open runs (BuildContext::open_run)");
    teacher_ = ctx.open_run(dir);
    const pathline::DataInfo mine = ctx.flow_space(), theirs = teacher_->flow();
    auto shape = [](const std::vector<std::int64_t>& s) {
      std::string text;
      for (auto d : s) text += (text.empty() ? "" : ", ") + std::to_string(d);
      return "[" + text + "]";
    };
    if (theirs.shape != mine.shape)
      throw pathline::InputError("reflow: teacher " + dir + " flows on samples of shape " +
                                 shape(theirs.shape) + ", this pipeline on " + shape(mine.shape));
    if (theirs.num_classes != mine.num_classes)
      throw pathline::InputError("reflow: teacher " + dir + " knows " + std::to_string(theirs.num_classes) +
                                 " classes, this pipeline's data " + std::to_string(mine.num_classes));
    num_classes_ = mine.num_classes;
    source_ = ctx.source;
    if (pairs_ > 0 && !source_) throw pathline::InputError("reflow: the source must be built first");
  }

  std::pair<Batch, Batch> couple(Batch source, Batch target, at::Generator& gen) override {
    const torch::Device device = source.x.device();
    if (pairs_ == 0) {
      Batch paired;
      if (target.labels.defined()) paired.labels = target.labels;
      paired.x =
          teacher_->transport(source.x, target.labels.defined() ? target.labels.to(device) : torch::Tensor());
      return {std::move(source), std::move(paired)};
    }
    if (!cache_x0_.defined()) generate(device);
    const torch::Tensor rows = torch::randint(pairs_, {source.x.size(0)}, gen, torch::kInt64);
    Batch from, to;
    from.x = cache_x0_.index_select(0, rows).to(device);
    to.x = cache_x1_.index_select(0, rows).to(device);
    if (cache_labels_.defined()) from.labels = to.labels = cache_labels_.index_select(0, rows);
    return {std::move(from), std::move(to)};
  }

  std::string initial_weights() const override { return start_from_teacher_ ? teacher_->weights_file() : ""; }

 private:
  // The pair data set: `pairs` source points and the teacher's solutions from them, in chunks.
  void generate(const torch::Device& device) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed_ ^ 0x7265666c6f77ULL);  // "reflow"
    std::vector<torch::Tensor> x0s, x1s;
    constexpr std::int64_t kChunk = 2000;
    for (std::int64_t done = 0; done < pairs_; done += kChunk) {
      const std::int64_t n = std::min(kChunk, pairs_ - done);
      torch::Tensor x0 = source_->sample(n, gen).x;
      torch::Tensor labels;
      if (num_classes_ > 0) labels = torch::arange(done, done + n, torch::kInt64).remainder(num_classes_);
      x1s.push_back(
          teacher_->transport(x0.to(device), labels.defined() ? labels.to(device) : labels).to(torch::kCPU));
      x0s.push_back(x0);
    }
    cache_x0_ = torch::cat(x0s);
    cache_x1_ = torch::cat(x1s);
    if (num_classes_ > 0) cache_labels_ = torch::arange(pairs_, torch::kInt64).remainder(num_classes_);
  }

  std::int64_t pairs_;
  bool start_from_teacher_;
  std::uint64_t seed_;
  std::int64_t num_classes_ = 0;
  std::shared_ptr<pathline::TrainedFlow> teacher_;
  std::shared_ptr<pathline::Dataset> source_;
  torch::Tensor cache_x0_, cache_x1_, cache_labels_;
};

void register_couplings(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Coupling, IndependentCoupling>(pathline::ComponentDecl{
      "independent", "pairs source (noise) and data rows as drawn (independent coupling)", {}});
  registrar.add_type<pathline::Coupling, MinibatchOtCoupling>(pathline::ComponentDecl{
      "minibatch_ot",
      "exact optimal assignment of noise to data rows within the batch under squared Euclidean cost "
      "(OT-CFM, Tong et al. 2023): straighter paths; exact solver, a few ms at B = 256",
      {}});
  registrar.add_type<pathline::Coupling, ConditionalOtCoupling>(pathline::ComponentDecl{
      "conditional_ot",
      "C2OT (Cheng & Schwing 2025): exact OT of noise to data within each class of a labelled batch, so "
      "every class keeps an unskewed share of the noise; minibatch_ot for unlabelled data",
      {}});
  registrar.add_type<pathline::Coupling, SinkhornCoupling>(pathline::ComponentDecl{
      "sinkhorn",
      "entropic OT plan (Sinkhorn, Cuturi 2013; log space for small eps); each data row draws its noise row "
      "from the plan's column, so noise rows may repeat",
      {ParamSpec::real("reg", 0.05,
                       "entropic regularisation eps; small: close to exact OT (needs more iterations), "
                       "large: close to independent pairs")
           .greater_than(0),
       ParamSpec::choice("reg_scale", {"mean_cost", "absolute"}, "mean_cost",
                         "mean_cost: eps = reg * mean squared distance of the batch (scale-free); "
                         "absolute: eps = reg"),
       ParamSpec::integer("iterations", 100, "Sinkhorn iterations at most").at_least(1),
       ParamSpec::real("tolerance", 1e-6,
                       "stop early once the plan's row sums are within this L1 distance of uniform "
                       "(checked every 10 iterations); 0: always run every iteration")
           .at_least(0)}});
  registrar.add_type<pathline::Coupling, ReflowCoupling>(pathline::ComponentDecl{
      "reflow",
      "rectified flow's reflow (Liu et al. 2023): each noise row paired with a trained teacher run's ODE "
      "solution from it; the student starts from the teacher's weights; 1 or 2 Euler steps then sample well",
      {ParamSpec::string("teacher", "", "the teacher's run directory (a trained flow run on the same data)"),
       ParamSpec::integer("pairs", 0,
                          "0: the teacher solves every batch afresh; N: N pairs generated once (on the first "
                          "batch) and drawn at random")
           .at_least(0),
       ParamSpec::boolean("start_from_teacher", true,
                          "the student starts from the teacher's weights (its model must be the same)")}});
}

}  // namespace

PATHLINE_PLUGIN("couplings", "0.1.0", register_couplings)
