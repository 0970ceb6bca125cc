// Kind `time_grid`: how the sampling interval is cut into steps. The engine asks the grid for the
// times and hands them to the solver, so that a solver only says how it steps.
#pragma once

#include "pathline/path.hpp"

namespace pathline {

class PATHLINE_API TimeGrid {
 public:
  virtual ~TimeGrid() = default;
  // steps + 1 times, the first exactly t0 and the last exactly t1, monotone (decreasing when
  // t1 < t0, to integrate from data back to noise). The path is there for grids defined in its
  // noise level (EDM's sigmas).
  virtual std::vector<double> times(std::int64_t steps, double t0, double t1, const Path& path) const = 0;
};

}  // namespace pathline
