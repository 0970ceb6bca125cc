#include "pathline/engine/sample.hpp"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "../precision.hpp"
#include "pathline/engine/random.hpp"

namespace pathline {

ModelField::ModelField(Model& model, const Path& path, const Parameterization& parameterization,
                       std::int64_t sample_rank, double guidance_scale, bool bf16)
    : model_(model),
      path_(path),
      parameterization_(parameterization),
      rank_(sample_rank),
      guidance_(guidance_scale),
      bf16_(bf16) {}

torch::Tensor ModelField::guided(const torch::Tensor& x, double t, const Extras& extras) {
  ++evaluations_;
  const std::int64_t n = x.size(0);
  if (labels_.defined() && labels_.size(0) != n)
    throw Error(fmt::format("vector field: {} labels for a batch of {}", labels_.size(0), n));
  torch::Tensor out;
  AutocastGuard autocast(bf16_, x.device());
  if (!labels_.defined() || guidance_ == 1.0) {
    out = forward(x, torch::full({n}, t, x.options()), Condition{labels_, extras});
  } else {
    // One forward over [x; x] with [labels; null]: the conditional and unconditional halves.
    Extras doubled;
    for (const auto& [name, tensor] : extras) doubled[name] = torch::cat({tensor, tensor});
    torch::Tensor both =
        forward(torch::cat({x, x}), torch::full({2 * n}, t, x.options()),
                Condition{torch::cat({labels_, torch::full_like(labels_, kNullLabel)}), std::move(doubled)});
    torch::Tensor conditional = both.narrow(0, 0, n), unconditional = both.narrow(0, n, n);
    out = torch::lerp(unconditional.to(x.scalar_type()), conditional.to(x.scalar_type()), guidance_);
  }
  if (out.scalar_type() != x.scalar_type()) out = out.to(x.scalar_type());
  return out;
}

torch::Tensor ModelField::average_velocity(const torch::Tensor& x, double t, double s) {
  const std::vector<std::string> times = model_.times();
  if (std::find(times.begin(), times.end(), kIntervalEnd) == times.end() ||
      parameterization_.predicts() != Quantity::velocity)
    return velocity(x, t);
  return guided(x, t, {{kIntervalEnd, torch::full({x.size(0)}, s, x.options())}});
}

torch::Tensor ModelField::predict(Quantity q, const torch::Tensor& x, double t) {
  const torch::Tensor out = guided(x, t, {});
  const std::int64_t n = x.size(0);
  if (parameterization_.predicts() == q) return out;
  auto convert = [&] {
    auto c = path_coefficients(torch::full({n}, t, x.options())).broadcast_to_rank(rank_);
    return parameterization_.convert(out, x, c, q);
  };
  return parameterization_origin_ ? plugin_call(*parameterization_origin_, "convert", convert) : convert();
}

torch::Tensor ModelField::forward(const torch::Tensor& x, const torch::Tensor& t,
                                  const Condition& condition) {
  auto call = [&](const torch::Tensor& xs, const torch::Tensor& ts, const Condition& cs) {
    if (!model_origin_) return model_.forward(xs, ts, cs);
    return plugin_call(*model_origin_, "forward", [&] { return model_.forward(xs, ts, cs); });
  };
  const std::int64_t n = x.size(0);
  const std::int64_t blocks = sampling_blocks(n);
  if (blocks <= 1 || !x.is_cpu() || !model_.rows_independent() || torch::GradMode::is_enabled())
    return call(x, t, condition);
  // Row blocks one after another, each with every intra-op thread (see sampling_blocks).
  std::vector<torch::Tensor> outputs;
  outputs.reserve(static_cast<std::size_t>(blocks));
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t first = n * b / blocks, rows = n * (b + 1) / blocks - first;
    auto part = [&](const torch::Tensor& v) {
      return v.defined() && v.dim() > 0 && v.size(0) == n ? v.narrow(0, first, rows) : v;
    };
    Condition block{part(condition.labels), {}};
    for (const auto& [name, tensor] : condition.extras) block.extras[name] = part(tensor);
    outputs.push_back(call(part(x), part(t), block));
  }
  return torch::cat(outputs);
}

std::int64_t sampling_blocks(std::int64_t rows) {
  return rows >= 2 * kSamplingBlockRows ? (rows + kSamplingBlockRows - 1) / kSamplingBlockRows : 1;
}

PathCoefficients ModelField::path_coefficients(const torch::Tensor& t) const {
  if (!path_origin_) return path_.coefficients(t);
  return plugin_call(*path_origin_, "coefficients", [&] { return path_.coefficients(t); });
}

PathCoefficients ModelField::coefficients(double t) const {
  return path_coefficients(torch::full({1}, t, torch::kFloat64));
}

std::vector<double> solver_times(const Components& c, double t0, double t1) {
  const std::int64_t steps = c.solver->grid_steps();
  if (steps <= 0) return {t0, t1};
  std::vector<double> times = c.time_grid->times(steps, t0, t1, *c.path);
  if (times.size() != static_cast<std::size_t>(steps) + 1 || times.front() != t0 || times.back() != t1)
    throw Error(fmt::format("time grid: asked for {} steps from {} to {}, got {} times{}", steps, t0, t1,
                            times.size(),
                            times.empty() ? "" : fmt::format(" from {} to {}", times.front(), times.back())));
  return times;
}

double conversion_gain(const Path& path, Quantity from, Quantity to, double t) {
  if (from == to) return 1.0;
  // The conversion is affine in the prediction at fixed x_t: its slope is the image of a unit
  // prediction at x_t = 0, through the SDK's own conversion (divisor floors included).
  const auto c = path.coefficients(torch::full({1}, t, torch::kFloat64));
  const auto one = torch::ones({1}, torch::kFloat64), zero = torch::zeros({1}, torch::kFloat64);
  return std::abs(convert_prediction(from, to, one, zero, c).item<double>());
}

namespace {

// Where converting the model's `from` into `to` multiplies its errors by at most kMaxConversionGain,
// as [lo, hi]: the grid of 1001 times over [0, 1], refined by bisection at each end that is not
// already safe. nullopt with `why` when the safe times are not one interval (a singular point inside)
// or there are none.
std::optional<std::pair<double, double>> conversion_interval(const Path& path, Quantity from, Quantity to,
                                                             std::string& why) {
  constexpr int kPoints = 1001;
  auto ok = [&](double t) { return conversion_gain(path, from, to, t) <= kMaxConversionGain; };
  std::vector<char> flags(kPoints);
  for (int i = 0; i < kPoints; ++i) flags[i] = ok(static_cast<double>(i) / (kPoints - 1));
  int first = 0, last = kPoints - 1;
  while (first < kPoints && !flags[first]) ++first;
  while (last >= 0 && !flags[last]) --last;
  if (first > last) {
    why = "nowhere on [0, 1]";
    return std::nullopt;
  }
  int bad_first = -1, bad_last = -1;
  for (int i = first; i <= last; ++i)
    if (!flags[i]) {
      if (bad_first < 0) bad_first = i;
      bad_last = i;
    }
  if (bad_first >= 0) {
    why = fmt::format("not between t = {:.3f} and {:.3f}, inside the interval",
                      static_cast<double>(bad_first) / (kPoints - 1),
                      static_cast<double>(bad_last) / (kPoints - 1));
    return std::nullopt;
  }
  auto refine = [&](int good_index, int bad_index) {
    double good = static_cast<double>(good_index) / (kPoints - 1),
           bad = static_cast<double>(bad_index) / (kPoints - 1);
    for (int k = 0; k < 60 && std::abs(good - bad) > 1e-9; ++k) {
      const double mid = 0.5 * (good + bad);
      (ok(mid) ? good : bad) = mid;
    }
    return good;
  };
  const double lo = first == 0 ? 0.0 : refine(first, first - 1);
  const double hi = last == kPoints - 1 ? 1.0 : refine(last, last + 1);
  return std::make_pair(lo, hi);
}

}  // namespace

namespace {

// Data concentrated at the origin: x_t = sigma_t x0, so the data prediction is 0 and every other
// quantity follows from it through the SDK's own conversions.
class PointMassField final : public VectorField {
 public:
  PointMassField(const Path& path, bool intervals) : path_(path), intervals_(intervals) {}
  torch::Tensor predict(Quantity q, const torch::Tensor& x, double t) override {
    const PathCoefficients c = coefficients(t).broadcast_to_rank(x.dim());
    return convert_prediction(Quantity::data, q, torch::zeros_like(x), x, c);
  }
  PathCoefficients coefficients(double t) const override {
    return path_.coefficients(torch::full({1}, t, torch::kFloat64));
  }
  // For a model that takes intervals, the exact flow x_s = (sigma_s / sigma_t) x_t as one step's
  // average velocity; for any other, the velocity at t (what ModelField gives).
  torch::Tensor average_velocity(const torch::Tensor& x, double t, double s) override {
    const double sigma_t = coefficients(t).sigma.item<double>(),
                 sigma_s = coefficients(s).sigma.item<double>();
    if (!intervals_ || sigma_t <= 0.0 || s == t) return velocity(x, t);
    return x * ((sigma_s / sigma_t - 1.0) / (s - t));
  }

 private:
  const Path& path_;
  bool intervals_;
};

}  // namespace

double noise_scale_error(Solver& solver, const TimeGrid& grid, const Path& path, double t_start, double t_end,
                         bool intervals) {
  if (!(t_start < t_end)) return 0.0;
  auto noise_dominates = [&](double t) {
    const auto c = path.coefficients(torch::full({1}, t, torch::kFloat64));
    return c.sigma.item<double>() >= std::abs(c.alpha.item<double>());
  };
  if (!noise_dominates(t_start)) return 0.0;
  std::vector<double> times;
  const std::int64_t steps = solver.grid_steps();
  if (steps > 0) {
    const std::vector<double> all = grid.times(steps, t_start, t_end, path);
    std::size_t last = 0;
    for (std::size_t i = 0; i < all.size(); ++i)
      if (noise_dominates(all[i])) last = i;
    if (last == 0) return 0.0;
    times.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(last) + 1);
  } else {
    double lo = t_start, hi = t_end;  // noise dominates at lo
    if (noise_dominates(hi)) {
      lo = hi;
    } else {
      for (int k = 0; k < 60; ++k) {
        const double mid = 0.5 * (lo + hi);
        (noise_dominates(mid) ? lo : hi) = mid;
      }
    }
    if (lo == t_start) return 0.0;
    times = {t_start, lo};
  }
  PointMassField field(path, intervals);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(20260101);
  const torch::Tensor x0 = torch::randn({20000, 1}, gen, torch::kFloat64);
  const double start_scale = field.coefficients(times.front()).sigma.item<double>();
  const double end_scale = field.coefficients(times.back()).sigma.item<double>();
  SolveRequest request;
  request.times = times;
  request.generator = &gen;
  const torch::Tensor x = solver.solve(field, x0 * start_scale, request);
  const double rms = x.square().mean().sqrt().item<double>() / x0.square().mean().sqrt().item<double>();
  return std::abs(rms / end_scale - 1.0);
}

SamplingInterval sampling_interval(const PipelineConfig& config, const Components& c) {
  const SampleSettings& sp = config.sample;
  auto [safe_start, safe_end] = c.parameterization->safe_interval(*c.path);
  // Every quantity the solver asks for must follow from the model's prediction without blowing its
  // errors up: a data-prediction solver (dpmpp_2m) on a velocity model of a path whose velocity says
  // nothing about the data at t = 0 (polynomial with n > 1) starts where it does.
  const Quantity predicted = c.parameterization->predicts();
  for (Quantity q : c.solver->quantities()) {
    // The velocity's own conversion is the parameterization's safe_interval above (its gain is the
    // path's speed, not a loss of information).
    if (q == predicted || q == Quantity::velocity) continue;
    std::string why;
    const auto safe = conversion_interval(*c.path, predicted, q, why);
    if (!safe)
      throw ConfigError({fmt::format(
          "{}: solver '{}' needs the {} that a model predicting {} gives on path '{}' only with its errors "
          "multiplied by more than {} ({}); choose another solver, parameterization or path",
          config.component("solver").where, config.component("solver").type, to_string(q),
          to_string(predicted), config.component("path").type, kMaxConversionGain, why)});
    safe_start = std::max(safe_start, safe->first);
    safe_end = std::min(safe_end, safe->second);
  }
  SamplingInterval interval;
  interval.t_start = sp.t_start.value_or(safe_start);
  interval.t_end = sp.t_end.value_or(safe_end);
  const std::string& final_step = sp.final_step;
  interval.denoise = final_step == "denoise" ||
                     (final_step == "auto" && interval.t_end < 1.0 && interval.t_start < interval.t_end);
  if (interval.t_start == interval.t_end)
    throw InputError(
        fmt::format("sample.t_start and sample.t_end are both {}: nothing to integrate", interval.t_start));
  if (interval.denoise && interval.t_end < interval.t_start)
    throw InputError(
        fmt::format("sample.final_step = \"denoise\" jumps to the data, but the interval runs "
                    "backwards (t_start = {} > t_end = {})",
                    interval.t_start, interval.t_end));
  return interval;
}

torch::Tensor sampling_labels(const PipelineConfig& config, const DataInfo& data, std::int64_t n) {
  if (!data.labelled()) return {};
  std::vector<std::int64_t> cycle = config.sample.labels;
  if (cycle.empty())
    for (std::int64_t k = 0; k < data.num_classes; ++k) cycle.push_back(k);
  torch::Tensor values = torch::tensor(cycle, torch::kInt64);
  return values.index({torch::arange(n, torch::kInt64) % static_cast<std::int64_t>(cycle.size())});
}

void check_noise(const torch::Tensor& noise, const DataInfo& data) {
  std::vector<std::int64_t> expected = data.shape;
  expected.insert(expected.begin(), noise.dim() > 0 ? noise.size(0) : 0);
  if (noise.sizes().vec() != expected || expected[0] == 0)
    throw InputError(
        fmt::format("the source points to start from are shaped {}; the data needs [n, {} with n >= 1",
                    shape_text(noise.sizes().vec()), shape_text(data.shape).substr(1)));
  if (!noise.is_floating_point())
    throw InputError(fmt::format("the source points to start from must be floating point, not {}",
                                 c10::toString(noise.scalar_type())));
  if (!torch::isfinite(noise).all().item<bool>())
    throw InputError("the source points to start from hold NaN or infinite values");
}

SampleResult sample(const PipelineConfig& config, Components& c, const SampleProgress& progress,
                    const torch::Tensor& noise, const torch::Tensor& labels) {
  const SampleSettings& sp = config.sample;
  const std::int64_t n = noise.defined() ? noise.size(0) : sp.n;
  if (noise.defined()) check_noise(noise, c.flow());
  const std::int64_t batch = std::min(n, sp.batch_size);
  const std::int64_t traj_count = std::min(batch, sp.trajectories);
  at::Generator gen = make_generator(config.run.seed, Stream::sample);

  c10::InferenceMode inference;
  c.model->eval();
  const std::int64_t rank = static_cast<std::int64_t>(c.flow().shape.size()) + 1;
  ModelField field(*c.model, *c.path, *c.parameterization, rank, sp.guidance_scale, sp.bf16());
  field.name_components(c);

  SampleResult result;
  result.interval = sampling_interval(config, c);
  const auto [t_start, t_end, denoise] = result.interval;
  if (!(t_start < t_end))
    throw InputError(
        fmt::format("sample.t_start = {} must be below sample.t_end = {} to sample (t runs "
                    "from noise at 0 to data at 1)",
                    t_start, t_end));
  const std::vector<double> times = solver_times(c, t_start, t_end);
  // x_{t_start} = alpha x1 + sigma x0 with x1 unknown: start from sigma_{t_start} x0 (x0 itself for
  // paths that start at pure source; sigma_max x0 for variance-exploding ones).
  const double prior_scale = field.coefficients(t_start).sigma.item<double>();

  if (labels.defined() && (!noise.defined() || labels.dim() != 1 || labels.size(0) != n))
    throw InputError(fmt::format("sampling: {} labels given for {} source points", labels.numel(), n));
  result.labels = labels.defined() && c.data().labelled() ? labels.to(torch::kInt64)
                                                          : sampling_labels(config, c.data(), n);
  std::vector<torch::Tensor> chunks, states;
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t done = 0; done < n; done += batch) {
    const std::int64_t size = std::min(batch, n - done);
    torch::Tensor x0 = noise.defined()
                           ? noise.narrow(0, done, size).to(c.context.device, torch::kFloat32, false, true)
                           : plugin_call(c.origin("source"), "drawing a batch", [&] {
                               return c.source->sample(size, gen);
                             }).x.to(c.context.device);
    if (prior_scale != 1.0) x0.mul_(prior_scale);
    field.set_labels(result.labels.defined() ? result.labels.narrow(0, done, size).to(c.context.device)
                                             : torch::Tensor());
    SolveRequest request;
    request.times = times;
    request.generator = &gen;
    if (done == 0 && traj_count > 0)
      request.observer = [&](double t, const torch::Tensor& x) {
        result.times.push_back(t);  // an adaptive solver's own steps, not the grid's
        states.push_back(x.narrow(0, 0, traj_count).to(torch::kCPU).clone());
      };
    torch::Tensor x =
        plugin_call(c.origin("solver"), "solve", [&] { return c.solver->solve(field, x0, request); });
    for (const auto& [key, value] : c.solver->statistics()) result.solver_statistics[key] += value;
    if (denoise) {
      // The last step: from x(t_end) straight to the predicted data (one evaluation).
      x = field.data(x, t_end);
      if (request.observer) request.observer(1.0, x);
    }
    // A latent flow's samples are decoded to the data's space.
    if (c.latent) {
      Condition condition;
      if (result.labels.defined())
        condition.labels = result.labels.narrow(0, done, size).to(c.context.device);
      x = c.to_data(x, condition);
    }
    chunks.push_back(x.to(torch::kCPU));
    if (done == 0) result.nfe = field.evaluations();
    if (progress)
      progress(done + size, n,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.samples = torch::cat(chunks);
  if (!states.empty() && c.latent) {
    // Every frame decoded, so that a trajectory shows data-space pictures.
    Condition condition;
    if (result.labels.defined())
      condition.labels = result.labels.narrow(0, 0, traj_count).to(c.context.device);
    for (auto& state : states) state = c.to_data(state.to(c.context.device), condition).to(torch::kCPU);
  }
  if (!states.empty()) result.trajectories = torch::stack(states);
  return result;
}

}  // namespace pathline
