// Tests of engine/plot (the chart library): every chart writes a PNG that reads back (through the engine's
// stb reader) with what it should show, and an SVG with real text; bad names and bad numbers never crash.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "pathline/engine/io.hpp"
#include "pathline/plot/plot.hpp"
#include "support/support.hpp"

namespace fs = std::filesystem;
using pathline::Image;

// The plot functions return the encoded picture; these write it with the engine's atomic write,
// as the engine's run jobs do.
namespace plot {
using pathline::plot::Axes;
using pathline::plot::Points;
using pathline::plot::Series;
void scatter(const fs::path& file, const Points& reference, const Points& generated,
             const std::string& title) {
  pathline::write_file_atomic(file, pathline::plot::scatter(file, reference, generated, title));
}
void pathlines(const fs::path& file, const std::vector<Points>& states, const Points& reference,
               const std::string& title) {
  pathline::write_file_atomic(file, pathline::plot::pathlines(file, states, reference, title));
}
void line_chart(const fs::path& file, const Axes& axes, const std::vector<Series>& series) {
  pathline::write_file_atomic(file, pathline::plot::line_chart(file, axes, series));
}
void panel_chart(const fs::path& file, const Axes& axes, const std::vector<pathline::plot::Panel>& panels,
                 int columns) {
  pathline::write_file_atomic(file, pathline::plot::panel_chart(file, axes, panels, columns));
}
void bar_chart(const fs::path& file, const Axes& axes, const std::vector<std::string>& labels,
               const std::vector<double>& values) {
  pathline::write_file_atomic(file, pathline::plot::bar_chart(file, axes, labels, values));
}
}  // namespace plot

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

class PlotTest : public pathline::testing::FolderTest {
 protected:
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator(dir_)) out.push_back(entry.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// n points around (cx, cy) with standard deviation s, as x0 y0 x1 y1 ...
plot::Points blob(std::size_t n, double cx, double cy, double s, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, s);
  plot::Points p;
  for (std::size_t i = 0; i < n; ++i) p.push_back(cx + normal(rng)), p.push_back(cy + normal(rng));
  return p;
}

// Pixel classes in an RGB picture.
struct Rgb {
  int r, g, b;
};
Rgb at(const Image& im, int x, int y) {
  const std::uint8_t* p = &im.pixels[(static_cast<std::size_t>(y) * im.width + x) * 3];
  return {p[0], p[1], p[2]};
}
// tab:blue (31, 119, 180), pure or blended over white.
bool is_blue(Rgb c) { return c.b - c.r > 40 && c.b > c.g + 10; }
// tab:orange (255, 127, 14).
bool is_orange(Rgb c) { return c.r - c.b > 80 && c.r > c.g + 40; }
// A mid grey (the data in a scatter), darker than the grid lines, lighter than text.
bool is_grey(Rgb c) { return std::abs(c.r - c.g) <= 4 && std::abs(c.g - c.b) <= 4 && c.r > 100 && c.r < 215; }
bool is_dark(Rgb c) { return c.r < 80 && c.g < 80 && c.b < 80; }
bool is_white(Rgb c) { return c.r == 255 && c.g == 255 && c.b == 255; }

template <typename Pred>
std::int64_t count(const Image& im, Pred pred, int x0, int y0, int x1, int y1) {
  std::int64_t n = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) n += pred(at(im, x, y));
  return n;
}
template <typename Pred>
std::int64_t count(const Image& im, Pred pred) {
  return count(im, pred, 0, 0, im.width, im.height);
}

// A PNG plot read back as RGB: a sensible size, and more than one colour.
Image read_plot(const fs::path& file) {
  Image im = pathline::read_image(file, 3);
  EXPECT_GE(im.width, 400);
  EXPECT_GE(im.height, 300);
  EXPECT_EQ(im.pixels.size(), static_cast<std::size_t>(im.width) * im.height * 3);
  EXPECT_GT(
      std::count_if(im.pixels.begin(), im.pixels.end(), [&](std::uint8_t v) { return v != im.pixels[0]; }),
      1000);
  return im;
}

// Text in a cairo SVG is drawn from glyph outlines defined once (id="glyph...") and used per
// character (<use xlink:href="#glyph...">); counts the characters drawn.
std::size_t glyphs_drawn(const std::string& svg) {
  std::size_t n = 0;
  for (std::size_t at = svg.find("#glyph"); at != std::string::npos; at = svg.find("#glyph", at + 1)) ++n;
  return n;
}

// ------------------------------------------------------------------------------------------------
// Scatter

TEST_F(PlotTest, ScatterShowsGreyDataAndBlueSamplesWhereTheyAre) {
  // Data on the left, samples on the right.
  plot::scatter(path("s.png"), blob(3000, -2, 0, 0.4, 1), blob(3000, 2, 0, 0.4, 2), "left and right");
  const Image im = read_plot(path("s.png"));
  EXPECT_EQ(im.width, im.height);  // equal axes: a square picture
  const int w = im.width, h = im.height;
  const std::int64_t blue_left = count(im, is_blue, 0, 0, w / 2, h),
                     blue_right = count(im, is_blue, w / 2, 0, w, h);
  const std::int64_t grey_left = count(im, is_grey, 0, 0, w / 2, h),
                     grey_right = count(im, is_grey, w / 2, 0, w, h);
  EXPECT_GT(blue_right, 5000);
  EXPECT_GT(grey_left, 5000);
  EXPECT_GT(blue_right, 10 * blue_left);  // the left has only the legend's blue marker
  EXPECT_GT(grey_left, 5 * grey_right);
  EXPECT_TRUE(is_white(at(im, 0, 0)));
  EXPECT_TRUE(is_white(at(im, w - 1, h - 1)));
  EXPECT_GT(count(im, is_dark), 500);  // frame, tick numbers, title

  // y grows upwards: samples at the top.
  plot::scatter(path("up.png"), blob(2000, 0, -2, 0.3, 3), blob(2000, 0, 2, 0.3, 4), "");
  const Image up = read_plot(path("up.png"));
  EXPECT_GT(count(up, is_blue, 0, 0, up.width, up.height / 2),
            10 * count(up, is_blue, 0, up.height / 2, up.width, up.height));
}

TEST_F(PlotTest, ScatterKeepsItsViewDespiteOutliersAndNonFiniteValues) {
  plot::Points clean = blob(4000, 0, 0, 1, 5);
  plot::scatter(path("clean.png"), blob(4000, 0, 0, 1, 6), clean, "clean");
  plot::Points wild = clean;
  wild[0] = 1e6;  // a diverged sample
  wild[3] = kNaN;
  wild[4] = kInf;
  wild[7] = -kInf;
  plot::scatter(path("wild.png"), blob(4000, 0, 0, 1, 6), wild, "wild");
  const std::int64_t blue_clean = count(read_plot(path("clean.png")), is_blue);
  const std::int64_t blue_wild = count(read_plot(path("wild.png")), is_blue);
  EXPECT_GT(blue_clean, 20000);
  // The bulk fills the view as before; a view stretched to 1e6 would squash it into a dot.
  EXPECT_GT(blue_wild, blue_clean * 9 / 10);
}

// ------------------------------------------------------------------------------------------------
// Pathlines

TEST_F(PlotTest, PathlinesDrawColouredLinesFromDarkStartsToColouredEnds) {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal;
  const std::size_t particles = 12, steps = 20;
  plot::Points start, end;
  for (std::size_t i = 0; i < particles; ++i) {
    start.push_back(normal(rng)), start.push_back(normal(rng));
    end.push_back(3 + 0.2 * normal(rng)), end.push_back(3 + 0.2 * normal(rng));
  }
  std::vector<plot::Points> states;
  for (std::size_t k = 0; k <= steps; ++k) {
    const double t = static_cast<double>(k) / steps;
    plot::Points s;
    for (std::size_t j = 0; j < start.size(); ++j) s.push_back((1 - t) * start[j] + t * end[j]);
    states.push_back(s);
  }
  plot::pathlines(path("p.png"), states, blob(2000, 3, 3, 0.3, 8), "pathlines");
  const Image im = read_plot(path("p.png"));
  auto saturated = [](Rgb c) { return std::max({c.r, c.g, c.b}) - std::min({c.r, c.g, c.b}) > 80; };
  EXPECT_GT(count(im, saturated), 1500);  // coloured lines and end markers
  EXPECT_GT(count(im, is_grey), 1000);    // the data underneath
  EXPECT_GT(count(im, is_dark), 300);     // start markers, frame and text
}

// ------------------------------------------------------------------------------------------------
// Line and bar charts

TEST_F(PlotTest, LineChartDrawsEachSeriesInItsColourOnLinearAndLogAxes) {
  plot::Series loss{"loss", {}, {}, false, true};
  plot::Series ema{"EMA", {}, {}, true, true};
  for (int i = 1; i <= 3000; ++i) {
    loss.x.push_back(i), loss.y.push_back(2.0 / std::sqrt(i) + 0.01 * std::sin(i));
    if (i % 100 == 0) ema.x.push_back(i), ema.y.push_back(2.0 / std::sqrt(i));
  }
  plot::Axes axes{"training loss", "step", "loss"};
  plot::line_chart(path("linear.png"), axes, {loss, ema});
  axes.log_x = axes.log_y = true;
  plot::line_chart(path("log.png"), axes, {loss, ema});
  for (const char* name : {"linear.png", "log.png"}) {
    SCOPED_TRACE(name);
    const Image im = read_plot(path(name));
    EXPECT_GT(im.width, im.height);
    EXPECT_GT(count(im, is_blue), 1000);
    EXPECT_GT(count(im, is_orange), 300);
    EXPECT_GT(count(im, is_dark), 800);  // frame, numbers, labels, title
  }
}

// The mean row of the blue pixels in each column that has any (-1 where none).
std::vector<double> blue_rows(const Image& im) {
  std::vector<double> rows(static_cast<std::size_t>(im.width), -1);
  for (int x = 0; x < im.width; ++x) {
    double sum = 0;
    int n = 0;
    for (int y = 0; y < im.height; ++y)
      if (is_blue(at(im, x, y))) sum += y, ++n;
    if (n > 0) rows[static_cast<std::size_t>(x)] = sum / n;
  }
  return rows;
}

// How far the middle of the blue curve lies from the chord between its quarter points, in pixels.
double bend(const Image& im) {
  const std::vector<double> rows = blue_rows(im);
  std::vector<int> columns;
  for (int x = 0; x < im.width; ++x)
    if (rows[static_cast<std::size_t>(x)] >= 0) columns.push_back(x);
  EXPECT_GT(columns.size(), 200u);
  if (columns.size() < 4) return 1e9;
  const int a = columns[columns.size() / 4], m = columns[columns.size() / 2],
            b = columns[3 * columns.size() / 4];
  const double chord = rows[a] + (rows[b] - rows[a]) * (m - a) / static_cast<double>(b - a);
  return std::abs(rows[m] - chord);
}

TEST_F(PlotTest, LogAxesMapPowerLawsToStraightLines) {
  plot::Series power{"", {}, {}, false, true};  // no label: no legend swatch among the blue pixels
  for (int i = 1; i <= 100; ++i) power.x.push_back(i), power.y.push_back(std::pow(i, 3.0));
  plot::line_chart(path("linear.png"), {"", "", ""}, {power});
  plot::line_chart(path("loglog.png"), {"", "", "", true, true}, {power});
  EXPECT_LT(bend(read_plot(path("loglog.png"))), 2.0);
  EXPECT_GT(bend(read_plot(path("linear.png"))), 20.0);  // x^3 is far from straight
}

// The mean row of the pixels of a class inside a rectangle (-1 where there are none).
template <typename Pred>
double mean_row(const Image& im, Pred pred, int x0, int y0, int x1, int y1) {
  double sum = 0;
  int n = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x)
      if (pred(at(im, x, y))) sum += y, ++n;
  return n > 0 ? sum / n : -1;
}

TEST_F(PlotTest, PanelChartSharesAxesAndColoursAndDrawsOneLegend) {
  // Six panels, three to a row; "flat" is at y = 1 in every panel, "rising" at y = k + 2 in panel k.
  // The series come in a different order in odd panels: colours follow the label, not the position.
  std::vector<pathline::plot::Panel> panels;
  for (int k = 0; k < 6; ++k) {
    const plot::Series flat{"flat", {1, 2, 4, 8}, {1, 1, 1, 1}};
    const plot::Series rising{"rising", {1, 2, 4, 8}, std::vector<double>(4, k + 2.0)};
    panels.push_back({"panel " + std::to_string(k), k % 2 == 1 ? std::vector<plot::Series>{rising, flat}
                                                               : std::vector<plot::Series>{flat, rising}});
  }
  const plot::Axes axes{"quality by setting", "NFE", "distance", true, false};
  plot::panel_chart(path("p.png"), axes, panels, 3);
  plot::panel_chart(path("p.svg"), axes, panels, 3);
  const Image im = read_plot(path("p.png"));
  // The layout in pixels: cells of 270 x 215 points under a 44-point title, right of the 28-point
  // column of the y label, 1.5 pixels per point; the legend to the right of the third column.
  const double cell_w = 270 * 1.5, cell_h = 215 * 1.5, head = 44 * 1.5, left = 28 * 1.5;
  ASSERT_GT(im.width, static_cast<int>(left + 3 * cell_w) + 60);
  ASSERT_GE(im.height, static_cast<int>(head + 2 * cell_h) - 1);
  std::vector<double> flat_rows, rising_rows;
  for (int k = 0; k < 6; ++k) {
    SCOPED_TRACE("panel " + std::to_string(k));
    const int x0 = static_cast<int>(left + (k % 3) * cell_w), y0 = static_cast<int>(head + (k / 3) * cell_h);
    const int x1 = static_cast<int>(x0 + cell_w), y1 = std::min(im.height, static_cast<int>(y0 + cell_h));
    EXPECT_GT(count(im, is_blue, x0, y0, x1, y1), 200);    // "flat" is blue in every panel
    EXPECT_GT(count(im, is_orange, x0, y0, x1, y1), 200);  // "rising" orange
    flat_rows.push_back(mean_row(im, is_blue, x0, y0, x1, y1) - y0);
    rising_rows.push_back(mean_row(im, is_orange, x0, y0, x1, y1) - y0);
  }
  for (int k = 1; k < 6; ++k) {
    EXPECT_NEAR(flat_rows[k], flat_rows[0], 1.5) << "panel " << k;       // the same y range in every panel
    EXPECT_LT(rising_rows[k], rising_rows[k - 1] - 5) << "panel " << k;  // higher values sit higher
  }
  // The legend: one swatch of each colour beside the panels, none inside them twice.
  const int legend_x = static_cast<int>(left + 3 * cell_w);
  EXPECT_GT(count(im, is_blue, legend_x, 0, im.width, im.height), 20);
  EXPECT_GT(count(im, is_orange, legend_x, 0, im.width, im.height), 20);
  EXPECT_GT(glyphs_drawn(read_bytes(path("p.svg"))), 60u);  // titles of six panels, ticks, legend
  EXPECT_THROW(pathline::plot::panel_chart(path("q.png"), axes, {}, 3), std::runtime_error);
  EXPECT_THROW(pathline::plot::panel_chart(path("q.png"), axes, panels, 0), std::runtime_error);
}

TEST_F(PlotTest, LongTitlesShrinkToFitThePicture) {
  // An ablation's title lists its swept keys; at the normal size this one is far wider than the chart.
  std::string title = "wasserstein (lower is better)";
  for (const char* key : {"solver.type", "solver.atol", "solver.rtol", "dataset.labelled", "coupling.type"})
    title += std::string(" / ") + key;
  plot::line_chart(path("t.png"), {title, "NFE", "W2"}, {{"a", {1, 2, 3}, {3, 1, 2}}});
  const Image im = read_plot(path("t.png"));
  const int band = im.height / 12;                                    // the title's rows
  EXPECT_GT(count(im, is_dark, 0, 0, im.width, band), 200);           // the title is there
  EXPECT_EQ(count(im, is_dark, 0, 0, 6, band), 0);                    // and clear of the left edge
  EXPECT_EQ(count(im, is_dark, im.width - 6, 0, im.width, band), 0);  // and of the right one
}

TEST_F(PlotTest, BarChartBarsAreAsTallAsTheirValues) {
  plot::Axes axes{"energy distance by solver", "solver", "energy distance"};
  plot::bar_chart(path("b.png"), axes, {"euler", "midpoint", "heun", "rk4"}, {0.04, 0.02, 0.01, 0.03});
  const Image im = read_plot(path("b.png"));
  // The blue height of each bar, sampled along the row of bars: columns of blue pixels.
  std::vector<int> heights;
  int run = 0;
  int best_in_run = 0;
  for (int x = 0; x < im.width; ++x) {
    int column = 0;
    for (int y = 0; y < im.height; ++y) column += is_blue(at(im, x, y));
    if (column > 10) {
      ++run;
      best_in_run = std::max(best_in_run, column);
    } else if (run > 0) {
      if (run > 20) heights.push_back(best_in_run);  // a bar, not a stray glyph
      run = 0, best_in_run = 0;
    }
  }
  ASSERT_EQ(heights.size(), 4u);
  EXPECT_NEAR(static_cast<double>(heights[1]) / heights[0], 0.5, 0.03);
  EXPECT_NEAR(static_cast<double>(heights[2]) / heights[0], 0.25, 0.03);
  EXPECT_NEAR(static_cast<double>(heights[3]) / heights[0], 0.75, 0.03);
}

// Dark pixels in the columns [x0, x1) over the whole height.
std::int64_t dark_in_columns(const Image& im, int x0, int x1) {
  return count(im, is_dark, x0, 0, x1, im.height);
}

TEST_F(PlotTest, BarChartErrorBarsReachOneStandardDeviationEitherSide) {
  plot::Axes axes{"W2 squared by coupling", "coupling", "W2 squared"};
  const std::vector<std::string> names = {"independent", "minibatch_ot"};
  plot::bar_chart(path("plain.png"), axes, names, {0.4, 0.2});
  pathline::write_file_atomic(
      path("bars.png"), pathline::plot::bar_chart(path("bars.png"), axes, names, {0.4, 0.2}, {0.1, 0.0}));
  const Image plain = read_plot(path("plain.png")), bars = read_plot(path("bars.png"));
  // The first bar's centre column: the error bar is a dark line 2 x 0.1 tall, about half the bar.
  int first = -1, last = -1;
  for (int x = 0; x < plain.width; ++x)
    if (count(plain, is_blue, x, 0, x + 1, plain.height) > 10) {
      if (first < 0) first = x;
      last = x;
      if (x + 1 < plain.width && count(plain, is_blue, x + 1, 0, x + 2, plain.height) <= 10) break;
    }
  ASSERT_GT(last - first, 20);
  const int centre = (first + last) / 2;
  const std::int64_t bar_height = count(plain, is_blue, centre, 0, centre + 1, plain.height);
  const std::int64_t extra =
      dark_in_columns(bars, centre - 1, centre + 2) - dark_in_columns(plain, centre - 1, centre + 2);
  EXPECT_GT(extra, bar_height / 3) << "bar " << bar_height << " px, error bar adds " << extra << " dark px";
  // The second bar has no spread: nothing added over it.
  EXPECT_THROW(pathline::plot::bar_chart(path("x.png"), axes, names, {0.4, 0.2}, {0.1}), std::exception);
}

TEST_F(PlotTest, LineChartErrorBarsWidenTheRangeAndMustPairWithThePoints) {
  plot::Axes axes{"energy distance by steps", "steps", "energy distance"};
  plot::Series with{"euler", {1, 2, 3}, {1.0, 2.0, 3.0}};
  with.error = {0.0, 0.0, 2.0};  // the last point reaches 5: the frame must show it
  plot::line_chart(path("e.png"), axes, {with});
  plot::Series without{"euler", {1, 2, 3}, {1.0, 2.0, 3.0}};
  plot::line_chart(path("n.png"), axes, {without});
  const Image e = read_plot(path("e.png")), n = read_plot(path("n.png"));
  // The frame's range grew to 5 for the bar: the line from y = 1 to 3 spans less of the height (about
  // half of 2/4 against 2/2), and the bar, drawn in the series' colour, reaches above the line.
  auto blue_rows = [](const Image& im) {
    int top = im.height, bottom = 0;
    for (int y = 0; y < im.height; ++y)
      if (count(im, is_blue, 0, y, im.width, y + 1) > 0) top = std::min(top, y), bottom = std::max(bottom, y);
    return std::pair<int, int>{top, bottom};
  };
  const auto [n_top, n_bottom] = blue_rows(n);
  const auto [e_top, e_bottom] = blue_rows(e);
  // Without the bar the line spans the frame; with it, line and bar span about the same height
  // (1 to 5 fills the frame), but the line itself (1 to 3) only half of it.
  EXPECT_NEAR(static_cast<double>(e_bottom - e_top), static_cast<double>(n_bottom - n_top),
              0.1 * (n_bottom - n_top));
  EXPECT_GT(count(e, is_blue), count(n, is_blue));
  with.error = {0.1};
  EXPECT_THROW(pathline::plot::line_chart(path("bad.png"), axes, {with}), std::exception);
}

TEST_F(PlotTest, ImageSheetDrawsEachPixelAsASquareAndLabelsTheRows) {
  // 2 x 2 tiles of 4 x 3 RGB pixels, 1 pixel apart: 9 x 7. Tile (0, 0) is red, the rest grey.
  pathline::plot::ImageSheet sheet;
  sheet.width = 9, sheet.height = 7, sheet.channels = 3;
  sheet.tile_width = 4, sheet.tile_height = 3, sheet.pad = 1;
  sheet.pixels.assign(9 * 7 * 3, 128);
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 4; ++x) {
      unsigned char* p = &sheet.pixels[(y * 9 + x) * 3];
      p[0] = 220, p[1] = 20, p[2] = 20;
    }
  sheet.row_labels = {"T-shirt/top", "Trouser"};
  sheet.title = "samples";
  pathline::write_file_atomic(path("sheet.png"), pathline::plot::image_sheet(path("sheet.png"), sheet, 800));
  const Image im = pathline::read_image(path("sheet.png"), 3);
  const int scale = (800 + 9 - 1) / 9;  // 89 screen pixels per image pixel
  EXPECT_GE(im.width, 800);
  // The red tile: a block 4 x 3 image pixels, drawn as (4 scale) x (3 scale) screen pixels, give or
  // take the edge pixels (nearest neighbour: no blur inside).
  int x0 = im.width, x1 = -1, y0 = im.height, y1 = -1;
  std::int64_t red = 0;
  for (int y = 0; y < im.height; ++y)
    for (int x = 0; x < im.width; ++x) {
      Rgb c = at(im, x, y);
      if (c.r == 220 && c.g == 20 && c.b == 20) {
        ++red, x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
      }
    }
  EXPECT_NEAR(x1 - x0 + 1, 4 * scale, 2);
  EXPECT_NEAR(y1 - y0 + 1, 3 * scale, 2);
  EXPECT_GT(red, static_cast<std::int64_t>((4 * scale - 2) * (3 * scale - 2)));  // solid: pixels stay pixels
  // The row labels sit left of the grid, in dark text; without labels the left is blank.
  EXPECT_GT(count(im, is_dark, 0, y0, x0, y1), 100);
  sheet.row_labels.clear();
  sheet.title.clear();
  pathline::write_file_atomic(path("bare.png"), pathline::plot::image_sheet(path("bare.png"), sheet, 800));
  const Image bare = pathline::read_image(path("bare.png"), 3);
  EXPECT_LT(bare.width, im.width);  // no label column
  EXPECT_EQ(count(bare, is_dark), 0);
  EXPECT_THROW(pathline::plot::image_sheet(path("sheet.svg"), sheet, 800), std::exception);
}

// ------------------------------------------------------------------------------------------------
// SVG, names, bad inputs

TEST_F(PlotTest, EveryPlotWritesAnSvgWithRealText) {
  const plot::Axes axes{"title", "x", "y"};
  plot::scatter(path("s.svg"), blob(200, 0, 0, 1, 9), blob(200, 1, 1, 1, 10), "samples");
  plot::pathlines(path("p.svg"), {blob(5, 0, 0, 1, 11), blob(5, 2, 2, 1, 12)}, blob(100, 2, 2, 1, 13),
                  "paths");
  plot::line_chart(path("l.svg"), axes, {{"a", {1, 2, 3}, {3, 1, 2}}});
  plot::bar_chart(path("b.svg"), axes, {"one", "two"}, {1.5, 2.5});
  for (const char* name : {"s.svg", "p.svg", "l.svg", "b.svg"}) {
    SCOPED_TRACE(name);
    const std::string svg = read_bytes(path(name));
    EXPECT_NE(svg.find("<svg"), std::string::npos);
    EXPECT_NE(svg.find("</svg>"), std::string::npos);
    EXPECT_NE(svg.find("id=\"glyph"), std::string::npos);  // glyph outlines, defined once
    EXPECT_GT(glyphs_drawn(svg), 20u);                     // tick numbers, labels, title, legend
  }
  EXPECT_EQ(names(), (std::vector<std::string>{"b.svg", "l.svg", "p.svg", "s.svg"}));  // no temporaries
}

TEST_F(PlotTest, UnknownExtensionsThrowNamingTheFileAndWriteNothing) {
  for (const char* name : {"plot.jpg", "plot.pdf", "plot", "plot.png.tmp"}) {
    SCOPED_TRACE(name);
    try {
      plot::scatter(path(name), {0, 0}, {1, 1}, "");
      ADD_FAILURE() << "no exception";
    } catch (const std::runtime_error& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.find(path(name).string() + ": unknown picture format"), 0u) << message;
      EXPECT_NE(message.find(".png or .svg"), std::string::npos) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos);
    }
  }
  EXPECT_THROW(plot::line_chart(path("l.gif"), {}, {}), std::runtime_error);
  EXPECT_THROW(plot::bar_chart(path("b.bmp"), {}, {}, {}), std::runtime_error);
  EXPECT_THROW(plot::pathlines(path("p.txt"), {}, {}, ""), std::runtime_error);
  EXPECT_TRUE(names().empty());
  // Upper-case extensions are the same formats.
  plot::scatter(path("upper.PNG"), {0, 0}, {1, 1}, "");
  EXPECT_EQ(pathline::read_image(path("upper.PNG")).channels, 3);
}

TEST_F(PlotTest, EmptyAndNonFiniteInputsDrawAnEmptyFrame) {
  const plot::Axes axes{"nothing", "x", "y", true, true};
  plot::scatter(path("s.png"), {}, {}, "empty");
  plot::scatter(path("nan.png"), {kNaN, kNaN, kInf, 0}, {kNaN, 1}, "not a number");
  plot::pathlines(path("p.png"), {}, {}, "no states");
  plot::pathlines(path("p0.png"), {{}, {}}, {}, "no particles");
  plot::pathlines(path("pn.png"), {{0, 0, kNaN, 1}, {1, kNaN, 2, 2}, {kInf, 1, 3, 3}}, {}, "broken");
  plot::line_chart(path("l.png"), axes, {});
  plot::line_chart(path("ln.png"), axes, {{"bad", {kNaN, -1, 0, 2}, {1, 2, 3, kInf}}, {"none", {}, {}}});
  plot::line_chart(path("one.png"), {"one point", "", ""}, {{"p", {5}, {5}}});
  plot::bar_chart(path("b.png"), axes, {}, {});
  plot::bar_chart(path("bn.png"), {"signs", "", ""}, {"nan", "neg", "inf", "zero"}, {kNaN, -2, kInf, 0});
  // Finite but extreme: spans beyond double range, spans below its precision, denormals on log axes.
  const double big = std::numeric_limits<double>::max(), tiny = std::numeric_limits<double>::denorm_min();
  plot::line_chart(path("huge.png"), {}, {{"", {1, 2}, {-big, big}}});
  plot::line_chart(path("flat.png"), {}, {{"", {1, 2}, {1e15, 1e15 + 0.25}}});
  plot::line_chart(path("denormal.png"), {"", "", "", true, true}, {{"", {tiny, big}, {tiny, big}}});
  plot::scatter(path("huge_scatter.png"), {-big, -big, big, big}, {0, 0, tiny, tiny}, "");
  plot::bar_chart(path("huge_bars.png"), {}, {"low", "high"}, {-big, big});
  for (const char* name :
       {"s.png", "nan.png", "p.png", "p0.png", "pn.png", "l.png", "ln.png", "one.png", "b.png", "bn.png",
        "huge.png", "flat.png", "denormal.png", "huge_scatter.png", "huge_bars.png"}) {
    SCOPED_TRACE(name);
    const Image im = read_plot(path(name));
    EXPECT_GT(count(im, is_dark), 200);  // at least the frame and the tick numbers
  }
}

TEST_F(PlotTest, InconsistentInputsThrowOneLineNamingTheFile) {
  auto message_of = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "(nothing thrown)";
  };
  const fs::path file = path("x.png");
  EXPECT_EQ(message_of([&] {
              plot::line_chart(file, {}, {{"loss", {1, 2, 3}, {1, 2}}});
            }),
            file.string() + ": series 'loss' has 3 x values and 2 y values (they must pair up)");
  EXPECT_EQ(message_of([&] {
              plot::bar_chart(file, {}, {"a", "b"}, {1});
            }),
            file.string() + ": a bar chart needs one value per label: 2 labels, 1 values");
  EXPECT_EQ(message_of([&] {
              plot::scatter(file, {1, 2, 3}, {}, "");
            }),
            file.string() + ": the reference points holds 3 numbers, not x y pairs (an even count)");
  EXPECT_EQ(message_of([&] {
              plot::pathlines(file, {{0, 0, 1, 1}, {0, 0}}, {}, "");
            }),
            file.string() +
                ": pathline states must hold the same particles at every time: state 0 has 2 points, state 1 "
                "has 1");
  EXPECT_TRUE(names().empty());
}

TEST_F(PlotTest, PlotsReplaceOldFilesWholeAndFailCleanlyWhereTheyCannotWrite) {
  plot::scatter(path("s.png"), blob(100, 0, 0, 1, 14), blob(100, 0, 0, 1, 15), "first");
  plot::line_chart(path("s.png"), {"second", "", ""}, {{"a", {0, 1}, {0, 1}}});
  const Image im = read_plot(path("s.png"));
  EXPECT_GT(im.width, im.height);  // the chart's shape, not the square scatter's
  EXPECT_EQ(names(), (std::vector<std::string>{"s.png"}));

  const fs::path nowhere = path("no/such/folder/s.png");
  try {
    plot::scatter(nowhere, {0, 0}, {1, 1}, "");
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).find(nowhere.string() + ": cannot write: "), 0u) << e.what();
  }
}

}  // namespace
