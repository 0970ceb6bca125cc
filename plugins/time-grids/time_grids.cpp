// Plugin "time-grids": how the sampling interval [t0, t1] is cut into the steps a fixed-step solver
// takes. The engine asks the grid for the times and hands them to the solver.
#include <cmath>
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

void register_time_grids(pathline::Registrar& registrar) {
  registrar.add_type<pathline::TimeGrid, UniformTimeGrid>(pathline::ComponentDecl{
      "uniform", "equal steps from t0 to t1: t_i = t0 + i (t1 - t0) / steps, the last exactly t1", {}});
}

}  // namespace

PATHLINE_PLUGIN("time-grids", "0.1.0", register_time_grids)
