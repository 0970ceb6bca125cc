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
  // Error bars: y +- error[i] (one standard deviation over seeds, say); empty, or one per point (0
  // or NaN: no bar at that point).
  std::vector<double> error = {};
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

// One bar per label, the value written above it; with `errors` (empty, or one per bar) an error bar
// of +- errors[i] on each.
PATHLINE_PLOT_API std::string bar_chart(const std::filesystem::path& file, const Axes& axes,
                                        const std::vector<std::string>& labels,
                                        const std::vector<double>& values,
                                        const std::vector<double>& errors = {});

// A sheet of small images drawn at a size a person looks at: `pixels` holds the tiles laid out as a
// grid (rows x columns of tile_width x tile_height 8-bit pixels, `pad` pixels between them, channels
// 1 or 3 interleaved, row-major), each pixel drawn as a square of screen pixels (nearest neighbour:
// pixels stay pixels) so that the sheet is at least `min_width` pixels wide; each tile row labelled
// on its left with row_labels[r] and each tile column on top with column_labels[c] (none when the
// list is empty), the title above. PNG only: the pixels are the content.
struct ImageSheet {
  int width = 0, height = 0, channels = 1;
  std::vector<unsigned char> pixels;
  int tile_width = 0, tile_height = 0, pad = 0;
  std::vector<std::string> row_labels, column_labels;
  std::string title;
};
PATHLINE_PLOT_API std::string image_sheet(const std::filesystem::path& file, const ImageSheet& sheet,
                                          int min_width = 800);

}  // namespace pathline::plot
