// Metric "nll": the exact negative log-likelihood of held-out data under the trained flow.
//
// A flow dx/dt = v(x, t) moves the density by the instantaneous change of variables (Chen et al.
// 2018, "Neural ordinary differential equations", theorem 1; FFJORD, Grathwohl et al. 2019, eq. 4):
//   d/dt log p_t(x_t) = -div v(x_t, t).
// So from a data point x at t_end, integrating the ODE backwards to t_start gives the source point
// x_start and
//   log p_{t_end}(x) = log p_{t_start}(x_start) - int_{t_start}^{t_end} div v(x_t, t) dt.
// The engine starts sampling from sigma_{t_start} x0 with x0 drawn from the [source], so
// log p_{t_start}(x) = log p0(x / sigma) - D log sigma, with log p0 the source's own density
// (Dataset::log_prob; the default gaussian source has one). A source without a density cannot be
// scored. Called directly, without a source, the metric assumes N(0, I) (docs/likelihood.md).
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;

enum class Estimator { exact, hutchinson };

constexpr double kPi = 3.14159265358979323846;

// `auto` switches to Hutchinson above this many dimensions: the exact divergence costs one
// vector-Jacobian product per dimension at every evaluation of the field.
constexpr std::int64_t kMaxExactDimensions = 8;

class NegativeLogLikelihood : public pathline::Metric {
 public:
  NegativeLogLikelihood(const Params& p, const BuildContext& ctx)
      : estimator_name_(p.string("estimator")),
        probes_(p.integer("probes")),
        steps_(p.integer("steps")),
        batch_size_(p.integer("batch_size")),
        max_points_(p.integer("n")),
        device_(ctx.device) {
    // The source's density is where the backward integration starts: a [source] without one is
    // refused now, before any training, not after it.
    if (ctx.source && !ctx.flow_space().shape.empty()) {
      std::vector<std::int64_t> shape = {1};
      shape.insert(shape.end(), ctx.flow_space().shape.begin(), ctx.flow_space().shape.end());
      if (!ctx.source->log_prob(torch::zeros(shape, torch::kFloat64)).defined())
        throw pathline::InputError(
            "nll needs the density of the [source] (Dataset::log_prob), and this source has none; use the "
            "default gaussian source, or leave nll out");
    }
  }

  pathline::Direction direction() const override { return pathline::Direction::lower_is_better; }

  pathline::MetricResult compute(const pathline::MetricInput& input) override {
    if (!input.field) throw pathline::InputError("nll: needs the model as a vector field; none was given");
    if (!input.reference.defined() || input.reference.dim() < 1 || input.reference.size(0) == 0)
      throw pathline::InputError("nll: got no reference samples to score");
    if (!(input.t_start < input.t_end))
      throw pathline::InputError("nll: the sampling interval runs from t = " + std::to_string(input.t_start) +
                                 " to " + std::to_string(input.t_end) +
                                 "; the likelihood needs t_start < t_end (noise at 0, data at 1)");

    // The engine calls metrics in inference mode, which records no graph; the divergence needs
    // autograd with respect to x (not the weights) for the whole of compute().
    c10::InferenceMode no_inference(false);
    torch::AutoGradMode grad(true);

    const std::int64_t n =
        max_points_ > 0 ? std::min(max_points_, input.reference.size(0)) : input.reference.size(0);
    // A normal tensor: made outside inference mode, so autograd may save it and what comes of it.
    const torch::Tensor points = input.reference.narrow(0, 0, n).clone();
    const std::int64_t dims = points.numel() / n;
    const Estimator estimator = resolve(dims);

    // Without a generator from the engine (a direct call), probes come from a fixed seed, so that
    // the result still repeats.
    std::optional<at::Generator> own;
    at::Generator* gen = input.generator;
    if (!gen && estimator == Estimator::hutchinson) {
      own = at::make_generator<at::CPUGeneratorImpl>(0);
      gen = &*own;
    }

    const double sigma = input.field->coefficients(input.t_start).sigma.item<double>();
    if (!(sigma > 0))
      throw pathline::InputError("nll: the path's sigma at t_start = " + std::to_string(input.t_start) +
                                 " is " + std::to_string(sigma) +
                                 "; the source density N(0, sigma^2 I) needs sigma > 0");

    // The source's density, checked once on a few points before the long integration.
    if (input.source) {
      const torch::Tensor probe =
          input.source->log_prob(points.narrow(0, 0, std::min<std::int64_t>(n, 2)).detach());
      if (!probe.defined())
        throw pathline::InputError(
            "nll: the [source] has no density (its Dataset::log_prob gives none); the likelihood needs "
            "log p0 of the source, as the default gaussian source has");
      if (probe.dim() != 1 || probe.size(0) != std::min<std::int64_t>(n, 2))
        throw pathline::InputError("nll: the [source]'s log_prob returned shape " + c10::str(probe.sizes()) +
                                   " for " + std::to_string(std::min<std::int64_t>(n, 2)) +
                                   " samples; it must be one number per sample");
    }

    std::vector<torch::Tensor> per_sample;
    for (std::int64_t done = 0; done < n; done += batch_size_) {
      const std::int64_t rows = std::min(batch_size_, n - done);
      per_sample.push_back(chunk_nll(*input.field, points.narrow(0, done, rows), input.t_start, input.t_end,
                                     sigma, estimator, gen, input.source));
    }
    const torch::Tensor nll = torch::cat(per_sample);  // [n] float64

    pathline::MetricResult result;
    result.value = nll.mean().item<double>();
    const double spread = n > 1 ? nll.std().item<double>() : 0.0;  // unbiased
    result.details["standard_error"] = spread / std::sqrt(static_cast<double>(n));
    result.details["bits_per_dim"] = result.value / (static_cast<double>(dims) * std::log(2.0));
    result.details["n"] = static_cast<double>(n);
    result.details["dimensions"] = static_cast<double>(dims);
    if (estimator == Estimator::hutchinson) result.details["probes"] = static_cast<double>(probes_);
    return result;
  }

 private:
  Estimator resolve(std::int64_t dims) const {
    if (estimator_name_ == "exact") return Estimator::exact;
    if (estimator_name_ == "hutchinson") return Estimator::hutchinson;
    return dims <= kMaxExactDimensions ? Estimator::exact : Estimator::hutchinson;
  }

  // Per-sample NLL of a chunk x (at t_end), [rows] float64.
  torch::Tensor chunk_nll(pathline::VectorField& field, const torch::Tensor& x_cpu, double t_start,
                          double t_end, double sigma, Estimator estimator, at::Generator* gen,
                          const pathline::Dataset* source) const {
    const std::int64_t rows = x_cpu.size(0);
    torch::Tensor x = x_cpu.to(device_);
    const std::int64_t dims = x.numel() / rows;

    // Hutchinson probes (Hutchinson 1989): E[eps^T J eps] = tr J for any eps of identity
    // covariance; Rademacher signs have the least variance among such draws. As in FFJORD, each
    // sample's probes stay the same along its whole trajectory, so that the integral of
    // eps^T J(t) eps is one unbiased estimate of the integral of the trace.
    torch::Tensor probes;  // [probes, rows, *shape]
    if (estimator == Estimator::hutchinson) {
      std::vector<std::int64_t> shape = {probes_};
      shape.insert(shape.end(), x.sizes().begin(), x.sizes().end());
      probes = torch::randint(2, shape, *gen, torch::TensorOptions().dtype(x.scalar_type()))
                   .mul_(2)
                   .sub_(1)
                   .to(device_);
    }

    // The augmented ODE d(x, L)/dt = (v(x, t), div v(x, t)), with L(t_end) = 0, by classical RK4
    // on a uniform grid from t_end down to t_start; then L(t_start) = -int_{t_start}^{t_end} div dt.
    const double h = (t_start - t_end) / static_cast<double>(steps_);
    torch::Tensor accumulated = torch::zeros({rows}, x.options().dtype(torch::kFloat64));
    for (std::int64_t i = 0; i < steps_; ++i) {
      // The last time is t_start exactly, not t_end + steps h with its rounding.
      const double t = t_end + static_cast<double>(i) * h;
      const double t_next = i + 1 == steps_ ? t_start : t_end + static_cast<double>(i + 1) * h;
      const double step = t_next - t;
      const double mid = t + 0.5 * step;
      auto [k1, d1] = derivative(field, x, t, estimator, probes);
      auto [k2, d2] = derivative(field, x + (0.5 * step) * k1, mid, estimator, probes);
      auto [k3, d3] = derivative(field, x + (0.5 * step) * k2, mid, estimator, probes);
      auto [k4, d4] = derivative(field, x + step * k3, t_next, estimator, probes);
      x = x + (step / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
      accumulated += (step / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4);
    }

    torch::Tensor log_source;
    if (source) {
      // x_start = sigma x0: log p(x_start) = log p0(x_start / sigma) - D log sigma.
      const torch::Tensor scaled = (x.detach().to(torch::kCPU, torch::kFloat64) / sigma).contiguous();
      log_source = source->log_prob(scaled).to(torch::kFloat64).to(x.device()) -
                   static_cast<double>(dims) * std::log(sigma);
    } else {
      // log N(x; 0, sigma^2 I) = -|x|^2 / (2 sigma^2) - D/2 log(2 pi sigma^2).
      const torch::Tensor squared = x.to(torch::kFloat64).reshape({rows, -1}).pow(2).sum(1);
      log_source = -squared / (2.0 * sigma * sigma) -
                   0.5 * static_cast<double>(dims) * std::log(2.0 * kPi * sigma * sigma);
    }
    // log p_{t_end}(x) = log p_{t_start}(x_start) + L(t_start).
    return (-(log_source + accumulated)).to(torch::kCPU);
  }

  // The velocity at (x, t), detached, and its divergence per sample ([rows] float64).
  std::pair<torch::Tensor, torch::Tensor> derivative(pathline::VectorField& field, const torch::Tensor& x,
                                                     double t, Estimator estimator,
                                                     const torch::Tensor& probes) const {
    const torch::Tensor input = x.detach().requires_grad_(true);
    const torch::Tensor v = field.velocity(input, t);
    if (!v.requires_grad())
      throw pathline::InputError(
          "nll: the vector field's velocity carries no autograd graph back to x (computed without grad?)");
    const std::int64_t rows = x.size(0);
    torch::Tensor divergence = torch::zeros({rows}, x.options().dtype(torch::kFloat64));
    if (estimator == Estimator::exact) {
      // div v = sum_i e_i^T J e_i: the i-th vector-Jacobian product with the unit vector e_i
      // (the same for every row) read at coordinate i. Row j's output depends on row j's input only,
      // so one product serves the whole batch.
      const torch::Tensor flat_v = v.reshape({rows, -1});
      const std::int64_t dims = flat_v.size(1);
      for (std::int64_t i = 0; i < dims; ++i) {
        torch::Tensor unit = torch::zeros_like(flat_v);
        unit.select(1, i).fill_(1.0);
        const torch::Tensor row =
            torch::autograd::grad({flat_v}, {input}, {unit}, /*retain_graph=*/i + 1 < dims)[0];
        divergence += row.reshape({rows, -1}).select(1, i).to(torch::kFloat64);
      }
    } else {
      // eps^T J eps = (eps^T J) . eps, one vector-Jacobian product per probe, averaged.
      const std::int64_t count = probes.size(0);
      for (std::int64_t k = 0; k < count; ++k) {
        const torch::Tensor eps = probes[k];
        const torch::Tensor row =
            torch::autograd::grad({v}, {input}, {eps}, /*retain_graph=*/k + 1 < count)[0];
        divergence += (row * eps).reshape({rows, -1}).sum(1).to(torch::kFloat64);
      }
      divergence /= static_cast<double>(count);
    }
    return {v.detach(), divergence};
  }

  std::string estimator_name_;
  std::int64_t probes_, steps_, batch_size_, max_points_;
  torch::Device device_;
};

}  // namespace

namespace pathline_metrics {

void register_likelihood(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Metric, NegativeLogLikelihood>(pathline::ComponentDecl{
      "nll",
      "negative log-likelihood of fresh data under the flow, in nats per sample, by integrating the "
      "divergence along the reverse ODE (FFJORD)",
      {ParamSpec::choice("estimator", {"auto", "exact", "hutchinson"}, "auto",
                         "divergence: exact = one vector-Jacobian product per dimension; hutchinson = "
                         "unbiased Rademacher-probe estimate; auto = exact up to 8 dimensions"),
       ParamSpec::integer("probes", 1, "Hutchinson probes per sample, fixed along its trajectory")
           .at_least(1),
       ParamSpec::integer("steps", 50, "RK4 steps from t_end back to t_start").at_least(1),
       ParamSpec::integer("batch_size", 1000, "data points integrated at once").at_least(1),
       ParamSpec::integer("n", 0, "score the first n reference samples; 0 = all").at_least(0)}});
}

}  // namespace pathline_metrics
