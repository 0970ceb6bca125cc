// Pictures of runs and ablations, drawn with cairo: anti-aliased lines and markers, axes with
// numbered ticks, titles and legends. Each function returns the encoded picture; `file` only
// chooses the format by its extension (.png or .svg) and names the picture in errors. The caller
// writes the bytes (the engine with its one atomic write, write_file_atomic). Nothing here knows
// LibTorch: callers pass plain numbers.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#define PATHLINE_PLOT_API __attribute__((visibility("default")))

namespace pathline::plot {

// 2D points, x0 y0 x1 y1 ...
using Points = std::vector<double>;

struct Series {
  std::string label;         // the legend's text ("" for none)
  std::vector<double> x, y;  // same length
  bool markers = true;       // a marker at every point
  bool lines = true;         // joined by a line
};

struct Axes {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
};

// Whether this build draws charts: false when it was configured with -DPATHLINE_CHARTS=OFF (no
// cairo), where every drawing function below throws; callers then leave their charts out.
PATHLINE_PLOT_API bool available();

// Reference data in grey and generated samples in blue, one dot each, with a legend; the view fits
// both (outliers beyond the 0.5% quantiles do not stretch it).
PATHLINE_PLOT_API std::string scatter(const std::filesystem::path& file, const Points& reference,
                                      const Points& generated, const std::string& title);

// Pathlines: states[k] holds the particles' positions at the k-th time (same count each), drawn as
// polylines from the start (small marker) to the end (larger marker), over the data in light grey.
PATHLINE_PLOT_API std::string pathlines(const std::filesystem::path& file, const std::vector<Points>& states,
                                        const Points& reference, const std::string& title);

// Lines (and markers) on numbered axes: loss curves, quality against NFE.
PATHLINE_PLOT_API std::string line_chart(const std::filesystem::path& file, const Axes& axes,
                                         const std::vector<Series>& series);

// Small multiples: one line chart per panel, on the same axes ranges, `columns` panels to a row;
// series with the same label have the same colour in every panel and one legend beside the panels.
// For sweeps with too many series for one chart (one panel per setting of the other keys).
struct Panel {
  std::string title;
  std::vector<Series> series;
};
PATHLINE_PLOT_API std::string panel_chart(const std::filesystem::path& file, const Axes& axes,
                                          const std::vector<Panel>& panels, int columns);

// How many series a chart tells apart by colour (matplotlib's tab10 cycle); more repeat colours.
inline constexpr int kDistinctColours = 10;

// One bar per label, the value written above it.
PATHLINE_PLOT_API std::string bar_chart(const std::filesystem::path& file, const Axes& axes,
                                        const std::vector<std::string>& labels,
                                        const std::vector<double>& values);

}  // namespace pathline::plot
