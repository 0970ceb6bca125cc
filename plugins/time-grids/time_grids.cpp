// Plugin "time-grids": how the sampling interval [t0, t1] is cut into the steps a fixed-step solver
// takes. The engine asks the grid for the times and hands them to the solver. Every grid returns
// steps + 1 times, the first exactly t0 and the last exactly t1, monotone either way; a decreasing
// grid (t1 < t0, data back to noise) is the increasing one reversed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "pathline/plugin.hpp"

namespace {

using pathline::BuildContext;
using pathline::Params;

// Equal steps: t_i = t0 + i h with h = (t1 - t0) / steps, i = 0 .. steps, the last time exactly t1
// (not t0 + steps h, which may miss it by rounding). Decreasing when t1 < t0. The grid of the
// classic fixed-step ODE methods (Hairer, Norsett & Wanner, "Solving ODEs I", ch. II.1) and of
// flow-matching sampling (Lipman et al. 2022).
class UniformTimeGrid : public pathline::TimeGrid {
 public:
  UniformTimeGrid(const Params&, const BuildContext&) {}

  std::vector<double> times(std::int64_t steps, double t0, double t1, const pathline::Path&) const override {
    if (steps < 1)
      throw pathline::Error("time grid 'uniform': needs at least 1 step, got " + std::to_string(steps));
    if (!std::isfinite(t0) || !std::isfinite(t1))
      throw pathline::Error("time grid 'uniform': the interval ends must be finite, got " +
                            std::to_string(t0) + " and " + std::to_string(t1));
    const double h = (t1 - t0) / static_cast<double>(steps);
    std::vector<double> grid(static_cast<std::size_t>(steps) + 1);
    for (std::int64_t i = 0; i < steps; ++i)
      grid[static_cast<std::size_t>(i)] = t0 + static_cast<double>(i) * h;
    grid.back() = t1;
    return grid;
  }
};

std::string number(double v) {
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.10g", v);
  return buffer;
}

void check_request(const char* grid, std::int64_t steps, double t0, double t1) {
  if (steps < 1)
    throw pathline::Error(std::string("time grid '") + grid + "': needs at least 1 step, got " +
                          std::to_string(steps));
  if (!(t0 >= 0.0 && t0 <= 1.0 && t1 >= 0.0 && t1 <= 1.0))
    throw pathline::Error(std::string("time grid '") + grid +
                          "': the interval ends must lie in [0, 1], got " + number(t0) + " and " +
                          number(t1));
}

// SD3's resolution-dependent shift (Esser et al. 2024, "Scaling Rectified Flow Transformers", sec.
// 5.3.2): in its noise level sigma = 1 - t, sigma' = s sigma / (1 + (s - 1) sigma). In our
// time that is the increasing map of [0, 1] onto itself
//   t' = warp(t) = t / (s - (s - 1) t),   with inverse   t = s t' / (1 + (s - 1) t'),
// which for s > 1 moves every time towards the noise end (t' < t): more steps where the noise is
// high, as SD3 found best for high resolutions (s = 3.0 at 1024^2). The grid is the shift of a
// uniform grid: the ends are pulled back through the inverse, the uniform grid laid between them, and
// every time warped, so that [0, 1] gives SD3's grid exactly and a sub-interval the same noise levels
// restricted to it. s = 1 is the uniform grid, to the last bit.
class ShiftedTimeGrid : public pathline::TimeGrid {
 public:
  ShiftedTimeGrid(const Params& p, const BuildContext&) : shift_(p.real("shift")) {}

  std::vector<double> times(std::int64_t steps, double t0, double t1, const pathline::Path&) const override {
    check_request("shifted", steps, t0, t1);
    const double s = shift_;
    auto warp = [s](double u) { return u / (s - (s - 1.0) * u); };
    auto unwarp = [s](double t) { return s * t / (1.0 + (s - 1.0) * t); };
    const double u0 = unwarp(t0), u1 = unwarp(t1);
    const double h = (u1 - u0) / static_cast<double>(steps);
    std::vector<double> grid(static_cast<std::size_t>(steps) + 1);
    for (std::int64_t i = 0; i < steps; ++i)
      grid[static_cast<std::size_t>(i)] = warp(u0 + static_cast<double>(i) * h);
    grid.front() = t0;
    grid.back() = t1;
    return grid;
  }

 private:
  double shift_;
};

// The noise levels of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative
// Models", eq. 5), for a path: EDM's sigma is the noise-to-signal ratio r_t = sigma_t / alpha_t of
// x_t / alpha_t = x1 + r_t x0, and the grid spaces r evenly in r^(1/rho) from the noise end to the
// data end,
//   r_i = (r_max^(1/rho) + i / N (r_min^(1/rho) - r_max^(1/rho)))^rho,   i = 0 .. N,
// rho = 7 (EDM): steps crowd where r is small, near the data. Each r_i is mapped back to a time by
// bisection on the path's coefficients (r_t must be monotone on the interval: decreasing for every
// built-in path). r_max and r_min are the path's ratio at the interval's ends, within
// [ratio_min, ratio_max] (EDM's sigma_min = 0.002 and sigma_max = 80). Beyond them an end keeps a step
// of its own, as EDM's last step from sigma_min to 0: the ratio is infinite where alpha_t = 0 (t = 0
// on paths that start at pure noise), which cannot be spaced from, and 0 where sigma_t = 0 (t = 1 on
// paths that reach the data), towards which rho = 7 would put most of the last steps within 1e-12 of
// t = 1 (on `vp`, where r^2 ~ 1 - t, onto t = 1 itself in double).
class EdmTimeGrid : public pathline::TimeGrid {
 public:
  EdmTimeGrid(const Params& p, const BuildContext&)
      : rho_(p.real("rho")), ratio_min_(p.real("ratio_min")), ratio_max_(p.real("ratio_max")) {
    if (!(ratio_min_ < ratio_max_))
      throw pathline::InputError("time grid 'edm': ratio_min (" + number(ratio_min_) +
                                 ") must be below ratio_max (" + number(ratio_max_) + ")");
  }

  std::vector<double> times(std::int64_t steps, double t0, double t1,
                            const pathline::Path& path) const override {
    check_request("edm", steps, t0, t1);
    if (t0 == t1)
      throw pathline::Error("time grid 'edm': the interval is empty (t0 = t1 = " + number(t0) + ")");
    const auto ends = path.coefficients(torch::tensor({t0, t1}, torch::kFloat64));
    const double r0 = ratio(ends, 0), r1 = ratio(ends, 1);
    if (!(r0 != r1))
      throw pathline::Error("time grid 'edm': the path's noise-to-signal ratio sigma_t / alpha_t is " +
                            number(r0) + " at both ends of [" + number(std::min(t0, t1)) + ", " +
                            number(std::max(t0, t1)) + "]; it must differ");
    // Built from the noise end (the larger ratio) to the data end, reversed if t0 is the data end.
    const bool forward = r0 > r1;
    const double t_noise = forward ? t0 : t1, t_data = forward ? t1 : t0;
    const double r_noise = std::max(r0, r1), r_data = std::min(r0, r1);
    // An end beyond [ratio_min, ratio_max] keeps a step of its own.
    const bool noise_kept = r_noise > ratio_max_, data_kept = r_data < ratio_min_;
    const double top = std::min(r_noise, ratio_max_), bottom = std::max(r_data, ratio_min_);
    if (!(top > bottom))
      throw pathline::Error("time grid 'edm': the path's noise-to-signal ratio runs from " + number(r_noise) +
                            " to " + number(r_data) + " on [" + number(std::min(t0, t1)) + ", " +
                            number(std::max(t0, t1)) + "], outside [ratio_min, ratio_max] = [" +
                            number(ratio_min_) + ", " + number(ratio_max_) + "]; widen them");

    std::vector<double> grid;
    grid.push_back(t_noise);
    // The times between the ends: `points` ratios spaced in r^(1/rho) from top to bottom, less those
    // that are an end already (top when the noise end keeps no step of its own, bottom likewise).
    const std::int64_t points = steps + 1 - (noise_kept ? 1 : 0) - (data_kept ? 1 : 0);
    if (steps > 1 && points >= 1) {
      std::vector<double> targets;
      const double a = std::pow(top, 1.0 / rho_), b = std::pow(bottom, 1.0 / rho_);
      const std::int64_t intervals = points - 1;
      for (std::int64_t i = 0; i < points; ++i)
        targets.push_back(
            intervals == 0
                ? top
                : std::pow(a + static_cast<double>(i) / static_cast<double>(intervals) * (b - a), rho_));
      std::vector<double> found = solve_times(path, targets, t_noise, t_data);
      const std::size_t first = noise_kept ? 0 : 1, last = found.size() - (data_kept ? 0 : 1);
      for (std::size_t i = first; i < last; ++i) grid.push_back(found[i]);
    }
    grid.push_back(t_data);
    if (!forward) std::reverse(grid.begin(), grid.end());
    return grid;
  }

 private:
  static double ratio(const pathline::PathCoefficients& c, std::int64_t i) {
    const double alpha = c.alpha[i].item<double>(), sigma = c.sigma[i].item<double>();
    return alpha == 0.0 ? std::numeric_limits<double>::infinity() : sigma / alpha;
  }

  // For each target ratio, the time between t_noise and t_data where sigma_t / alpha_t equals it, by
  // bisection (all targets at once): `noise_side` keeps r >= target, `data_side` r < target. Compared
  // as sigma >= target alpha, which needs no division where alpha = 0. It stops when no midpoint lies
  // strictly between its sides any more: at the resolution of double.
  static std::vector<double> solve_times(const pathline::Path& path, const std::vector<double>& targets,
                                         double t_noise, double t_data) {
    const auto n = static_cast<std::int64_t>(targets.size());
    auto target = torch::tensor(targets, torch::kFloat64);
    auto noise_side = torch::full({n}, t_noise, torch::kFloat64),
         data_side = torch::full({n}, t_data, torch::kFloat64);
    for (int iteration = 0; iteration < 2000; ++iteration) {
      auto middle = (noise_side + data_side) / 2;
      if (((middle == noise_side) | (middle == data_side)).all().item<bool>()) break;
      auto c = path.coefficients(middle);
      auto noisier = c.sigma >= target * c.alpha;
      noise_side = torch::where(noisier, middle, noise_side);
      data_side = torch::where(noisier, data_side, middle);
    }
    auto found = ((noise_side + data_side) / 2).contiguous();
    return std::vector<double>(found.data_ptr<double>(), found.data_ptr<double>() + n);
  }

  double rho_, ratio_min_, ratio_max_;
};

void register_time_grids(pathline::Registrar& registrar) {
  using pathline::ParamSpec;
  registrar.add_type<pathline::TimeGrid, UniformTimeGrid>(pathline::ComponentDecl{
      "uniform", "equal steps from t0 to t1: t_i = t0 + i (t1 - t0) / steps, the last exactly t1", {}});
  registrar.add_type<pathline::TimeGrid, ShiftedTimeGrid>(pathline::ComponentDecl{
      "shifted",
      "SD3's shift of the uniform grid (Esser et al. 2024): t' = t / (s - (s - 1) t), more steps near noise "
      "for s > 1",
      {ParamSpec::real("shift", 3.0,
                       "the shift s; 1 is the uniform grid, > 1 crowds steps near noise (t = 0)")
           .greater_than(0.0)}});
  registrar.add_type<pathline::TimeGrid, EdmTimeGrid>(pathline::ComponentDecl{
      "edm",
      "Karras et al. 2022's noise levels: the noise-to-signal ratio sigma_t / alpha_t evenly spaced in its "
      "1/rho power, steps crowded near the data",
      {ParamSpec::real("rho", 7.0, "the power rho; 1 spaces the ratio evenly, larger crowds steps near data")
           .greater_than(0.0),
       ParamSpec::real(
           "ratio_min", 0.002,
           "smallest noise-to-signal ratio spaced (EDM's sigma_min): below it (0 where sigma_t = 0) "
           "the data end takes one step of its own")
           .greater_than(0.0),
       ParamSpec::real("ratio_max", 80.0,
                       "largest noise-to-signal ratio spaced (EDM's sigma_max): above it (infinite where "
                       "alpha_t = 0) the noise end takes one step of its own")
           .greater_than(0.0)}});
}

}  // namespace

PATHLINE_PLUGIN("time-grids", "0.1.0", register_time_grids)
