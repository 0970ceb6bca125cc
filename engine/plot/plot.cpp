// Pictures of runs drawn with cairo (see plot.hpp). The look follows a careful matplotlib figure:
// white page, light grid at the major ticks, dark frame with outward tick marks, DejaVu Sans text,
// the tab10 colours, and a legend in the corner that hides the fewest points.
#include "pathline/plot/plot.hpp"

#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pathline::plot {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const fs::path& file, const std::string& reason) {
  throw std::runtime_error(file.string() + ": " + reason);
}

// ------------------------------------------------------------------------------------------------
// Colours and sizes (points; a PNG has kPngPixelsPerPoint pixels per point)

struct Colour {
  double r, g, b;
};

constexpr Colour rgb(int r, int g, int b) { return {r / 255.0, g / 255.0, b / 255.0}; }

constexpr Colour kWhite = rgb(255, 255, 255);
constexpr Colour kInk = rgb(34, 34, 34);      // text, frame, tick marks
constexpr Colour kGrid = rgb(229, 229, 229);  // grid lines at major ticks
constexpr Colour kMinorGrid = rgb(243, 243, 243);
constexpr Colour kLegendEdge = rgb(204, 204, 204);
constexpr Colour kReference = rgb(140, 140, 140);  // data in the scatter
constexpr Colour kLightReference = rgb(175, 175, 175);
// matplotlib's default colour cycle ("tab10"); tab:blue first, for generated samples and single series.
constexpr Colour kPalette[] = {rgb(31, 119, 180),  rgb(255, 127, 14), rgb(44, 160, 44),   rgb(214, 39, 40),
                               rgb(148, 103, 189), rgb(140, 86, 75),  rgb(227, 119, 194), rgb(127, 127, 127),
                               rgb(188, 189, 34),  rgb(23, 190, 207)};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);
static_assert(kPaletteSize == kDistinctColours, "plot.hpp promises as many colours as the palette holds");
constexpr Colour kBlue = kPalette[0];

constexpr double kPi = 3.14159265358979323846;
constexpr const char* kFont = "DejaVu Sans";
constexpr double kTitleSize = 14, kLabelSize = 12, kTickSize = 10.5, kLegendSize = 10.5;
constexpr double kPngPixelsPerPoint = 1.5;  // 150 dpi at 100 points per inch-equivalent: crisp digits
constexpr double kChartWidth = 720, kChartHeight = 480, kSquareSize = 640;

void set_colour(cairo_t* cr, const Colour& c, double alpha = 1.0) {
  cairo_set_source_rgba(cr, c.r, c.g, c.b, alpha);
}

bool finite(double x, double y) { return std::isfinite(x) && std::isfinite(y); }

// ------------------------------------------------------------------------------------------------
// Formats: the figure's surface by extension

enum class Format { png, svg };

Format format_of(const fs::path& file) {
  std::string ext = file.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".png") return Format::png;
  if (ext == ".svg") return Format::svg;
  fail(file, "unknown picture format '" + (ext.empty() ? std::string("(no extension)") : ext) +
                 "': name the file .png or .svg");
}

cairo_status_t append_bytes(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

// A page of width x height points on the surface the file's extension asks for. Drawing happens in
// points; encode() returns the picture's bytes (the caller writes them: the engine's one atomic write).
class Figure {
 public:
  Figure(const fs::path& file, double width, double height)
      : file_(file), format_(format_of(file)), width_(width), height_(height) {
    if (format_ == Format::svg) {
      surface_ = cairo_svg_surface_create_for_stream(append_bytes, &bytes_, width, height);
    } else {
      surface_ = cairo_image_surface_create(CAIRO_FORMAT_RGB24,
                                            static_cast<int>(std::lround(width * kPngPixelsPerPoint)),
                                            static_cast<int>(std::lround(height * kPngPixelsPerPoint)));
    }
    cr_ = cairo_create(surface_);
    if (cairo_status(cr_) != CAIRO_STATUS_SUCCESS) {
      const std::string reason = cairo_status_to_string(cairo_status(cr_));
      cairo_destroy(cr_);
      cairo_surface_destroy(surface_);
      fail(file, "cannot start the picture: " + reason);
    }
    if (format_ == Format::png) cairo_scale(cr_, kPngPixelsPerPoint, kPngPixelsPerPoint);
    set_colour(cr_, kWhite);
    cairo_paint(cr_);
    cairo_select_font_face(cr_, kFont, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    // Metrics unhinted, so that text is laid out the same in the PNG and the SVG.
    cairo_font_options_t* options = cairo_font_options_create();
    cairo_font_options_set_hint_metrics(options, CAIRO_HINT_METRICS_OFF);
    cairo_font_options_set_antialias(options, CAIRO_ANTIALIAS_GRAY);
    cairo_set_font_options(cr_, options);
    cairo_font_options_destroy(options);
  }
  ~Figure() {
    cairo_destroy(cr_);
    cairo_surface_destroy(surface_);
  }
  Figure(const Figure&) = delete;
  Figure& operator=(const Figure&) = delete;

  cairo_t* cr() const { return cr_; }
  double width() const { return width_; }
  double height() const { return height_; }

  std::string encode() {
    check("cannot draw the picture");
    if (format_ == Format::svg) {
      cairo_surface_finish(surface_);  // flushes the SVG document into bytes_
    } else {
      cairo_surface_flush(surface_);
      if (cairo_surface_write_to_png_stream(surface_, append_bytes, &bytes_) != CAIRO_STATUS_SUCCESS)
        fail(file_, "cannot encode the PNG");
    }
    if (cairo_surface_status(surface_) != CAIRO_STATUS_SUCCESS)
      fail(file_, std::string("cannot encode the picture: ") +
                      cairo_status_to_string(cairo_surface_status(surface_)));
    return std::move(bytes_);
  }

 private:
  void check(const char* what) const {
    if (cairo_status(cr_) != CAIRO_STATUS_SUCCESS)
      fail(file_, std::string(what) + ": " + cairo_status_to_string(cairo_status(cr_)));
  }

  fs::path file_;
  Format format_;
  double width_, height_;
  std::string bytes_;
  cairo_surface_t* surface_ = nullptr;
  cairo_t* cr_ = nullptr;
};

// ------------------------------------------------------------------------------------------------
// Text

enum class HAlign { left, centre, right };
enum class VAlign { top, middle, baseline, bottom };

// Marks the start of a superscript in a tick label: "10" kSuperscript "-3" draws 10 with -3 raised.
// A control character, so that no title or label a user writes can contain it by accident.
constexpr char kSuperscript = '\x01';

struct TextSize {
  double width, ascent, descent;
};

TextSize measure(cairo_t* cr, const std::string& text, double size, bool bold = false) {
  cairo_select_font_face(cr, kFont, CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
  cairo_font_extents_t font;
  cairo_font_extents(cr, &font);
  const std::size_t caret = text.find(kSuperscript);
  cairo_text_extents_t ext;
  cairo_text_extents(cr, text.substr(0, caret).c_str(), &ext);
  double width = ext.x_advance, ascent = font.ascent * 0.8;  // digits and capitals reach ~0.8 ascent
  if (caret != std::string::npos) {
    cairo_set_font_size(cr, size * 0.7);
    cairo_text_extents(cr, text.substr(caret + 1).c_str(), &ext);
    width += ext.x_advance;
    ascent += size * 0.3;
  }
  return {width, ascent, font.descent};
}

// Draws text with (x, y) at the chosen anchor; `angle` in radians, counter-clockwise on the page.
// The largest size up to `size` (and not below 7) at which `text` is at most `width` wide: long
// titles (an ablation's swept keys) shrink to fit the picture instead of running off its edges.
double fitted_size(cairo_t* cr, const std::string& text, double size, double width, bool bold = false) {
  const double natural = measure(cr, text, size, bold).width;
  if (natural <= width || natural <= 0) return size;
  return std::max(7.0, size * width / natural);
}

void draw_text(cairo_t* cr, double x, double y, const std::string& text, double size, HAlign h, VAlign v,
               const Colour& colour = kInk, bool bold = false, double angle = 0) {
  if (text.empty()) return;
  const TextSize m = measure(cr, text, size, bold);
  double dx = h == HAlign::left ? 0 : h == HAlign::centre ? -m.width / 2 : -m.width;
  double dy = v == VAlign::top      ? m.ascent
              : v == VAlign::middle ? m.ascent / 2
              : v == VAlign::bottom ? -m.descent
                                    : 0;
  cairo_save(cr);
  cairo_translate(cr, x, y);
  cairo_rotate(cr, -angle);
  set_colour(cr, colour);
  const std::size_t caret = text.find(kSuperscript);
  cairo_set_font_size(cr, size);
  cairo_move_to(cr, dx, dy);
  cairo_show_text(cr, text.substr(0, caret).c_str());
  if (caret != std::string::npos) {
    double cx, cy;
    cairo_get_current_point(cr, &cx, &cy);
    cairo_set_font_size(cr, size * 0.7);
    cairo_move_to(cr, cx, cy - size * 0.42);
    cairo_show_text(cr, text.substr(caret + 1).c_str());
  }
  cairo_restore(cr);
}

// ------------------------------------------------------------------------------------------------
// Ticks

struct Tick {
  double value;
  std::string label;  // "" for a minor tick
};

// Typeset minus signs (U+2212, as matplotlib writes them): a hyphen is too short beside digits.
std::string with_minus_signs(const std::string& text) {
  std::string out;
  for (char c : text) out += c == '-' ? std::string("\u2212") : std::string(1, c);
  return out;
}

// A number for a tick label: as many decimals as the step needs, no "-0", and exponent notation
// when the numbers are very large or very small.
std::string tick_label(double value, double step) {
  if (std::abs(value) < step * 1e-9) value = 0;
  char buffer[64];
  const double magnitude = std::max(std::abs(value), step);
  if (magnitude >= 1e6 || (magnitude < 1e-4 && value != 0)) {
    std::snprintf(buffer, sizeof(buffer), "%.3g", value);
  } else {
    // Decimals so that neighbouring labels differ: 0.25 steps need 2, 0.2 steps 1, 5 steps 0.
    int decimals = 0;
    while (decimals < 10 &&
           std::abs(step * std::pow(10.0, decimals) - std::round(step * std::pow(10.0, decimals))) >
               1e-6 * step * std::pow(10.0, decimals))
      ++decimals;
    std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  }
  const std::string label = buffer;
  return with_minus_signs(label == "-0" ? "0" : label);
}

// "Nice" ticks on [lo, hi]: a step of 1, 2, 2.5 or 5 times a power of ten, chosen so that at most
// `most` ticks fall inside (Heckbert, "Nice numbers for graph labels", Graphics Gems, 1990).
std::vector<Tick> linear_ticks(double lo, double hi, int most = 7) {
  const double span = hi - lo;
  const double magnitude = std::pow(10.0, std::floor(std::log10(span / most)));
  double step = magnitude * 10;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    const double s = m * magnitude;
    if (std::floor(hi / s) - std::ceil(lo / s) + 1 <= most) {
      step = s;
      break;
    }
  }
  const double k0 = std::ceil(lo / step - 1e-9), k1 = std::floor(hi / step + 1e-9);
  // A span too small for the numbers' precision (1e15 to 1e15 + 0.1), or not finite: its ends only.
  if (!(std::isfinite(k0) && std::isfinite(k1) && k1 - k0 <= 4 * most && std::abs(k0) < 1e15))
    return {{lo, tick_label(lo, span)}, {hi, tick_label(hi, span)}};
  std::vector<Tick> ticks;
  for (double k = k0; k <= k1; k += 1) ticks.push_back({k * step, tick_label(k * step, step)});
  return ticks;
}

// Powers of ten labelled 10^k, with unlabelled minor ticks at 2..9 times them. Ranges too short
// for that get plain numbers, as matplotlib's LogLocator does: under two decades 1, 2 and 5 times
// the powers are labelled, under one decade every multiple, and under half a decade the linear
// "nice" ticks (all positive there) serve.
std::vector<Tick> log_ticks(double lo, double hi) {
  const double decades = std::log10(hi / lo);
  if (decades < 0.5) return linear_ticks(lo, hi);
  const int e0 = static_cast<int>(std::floor(std::log10(lo))),
            e1 = static_cast<int>(std::ceil(std::log10(hi)));
  const int every = std::max(1, (e1 - e0 + 6) / 7);  // at most ~7 labelled decades
  const bool few = decades < 2, very_few = decades < 1;
  auto inside = [&](double v) { return v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9); };
  auto plain = [](double v) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%g", v);
    return with_minus_signs(buffer);
  };
  std::vector<Tick> ticks;
  for (int e = e0; e <= e1; ++e) {
    const double power = std::pow(10.0, e);
    if (inside(power) && (e % every == 0 || few)) {
      char buffer[32];
      std::snprintf(buffer, sizeof(buffer), "10%c%d", kSuperscript, e);
      ticks.push_back({power, few && e >= -3 && e <= 4 ? plain(power) : with_minus_signs(buffer)});
    }
    if (every > 1) continue;
    for (int m = 2; m <= 9; ++m) {
      const double v = m * power;
      if (inside(v)) ticks.push_back({v, very_few || (few && (m == 2 || m == 5)) ? plain(v) : ""});
    }
  }
  return ticks;
}

// ------------------------------------------------------------------------------------------------
// Axes: data ranges onto a box of the page

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  bool empty() const { return !(lo <= hi); }
  void add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  void add(const Range& r) {
    if (!r.empty()) add(r.lo), add(r.hi);
  }
};

// A usable axis range from the data's: [0, 1] for none, a unit (or a decade) around a single
// value, and a margin of `margin` of the span on both sides (matplotlib's 5%).
Range padded(Range r, bool log, double margin) {
  // Axes end within 1e+-300 (and log axes above 1e-300), so that spans, margins and the mapping
  // onto the page stay finite; points beyond are off the page.
  constexpr double kLimit = 1e300;
  if (log) {
    if (r.empty()) return {1, 10};
    double a = std::log10(std::clamp(r.lo, 1 / kLimit, kLimit)),
           b = std::log10(std::clamp(r.hi, 1 / kLimit, kLimit));
    if (b - a < 1e-9) a -= 0.5, b += 0.5;
    const double pad = (b - a) * margin;
    return {std::pow(10.0, std::max(a - pad, -300.0)), std::pow(10.0, std::min(b + pad, 300.0))};
  }
  if (r.empty()) return {0, 1};
  r.lo = std::clamp(r.lo, -kLimit, kLimit), r.hi = std::clamp(r.hi, -kLimit, kLimit);
  if (r.hi - r.lo <= 1e-12 * std::max(1.0, std::abs(r.lo))) {
    const double half = std::max(0.5, std::abs(r.lo) * 0.1);
    return {r.lo - half, r.hi + half};
  }
  const double pad = (r.hi - r.lo) * margin;
  return {r.lo - pad, r.hi + pad};
}

struct Scale {
  double lo, hi;  // data values at the two ends
  bool log;
  double p0, p1;  // page coordinates of lo and hi
  double map(double v) const {
    const double t =
        log ? (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo)) : (v - lo) / (hi - lo);
    return p0 + t * (p1 - p0);
  }
  bool valid(double v) const { return std::isfinite(v) && (!log || v > 0); }
};

struct Frame {
  double left, top, right, bottom;  // the plot area on the page
  Scale x, y;
  std::vector<Tick> x_ticks, y_ticks;
  bool x_categorical = false;  // bar charts label their bars themselves
};

struct FrameSpec {
  std::string title, x_label, y_label;
  Range x, y;  // already padded
  bool log_x = false, log_y = false;
  bool square = false;      // equal units on both axes, the plot area a square
  double extra_bottom = 0;  // room for bar labels
};

Frame layout(cairo_t* cr, double width, double height, const FrameSpec& spec) {
  Frame f;
  f.x_ticks = spec.log_x ? log_ticks(spec.x.lo, spec.x.hi) : linear_ticks(spec.x.lo, spec.x.hi);
  f.y_ticks = spec.log_y ? log_ticks(spec.y.lo, spec.y.hi) : linear_ticks(spec.y.lo, spec.y.hi);
  double widest = 0;
  for (const Tick& t : f.y_ticks) widest = std::max(widest, measure(cr, t.label, kTickSize).width);
  const double tick_height = measure(cr, std::string("0") + kSuperscript + "1", kTickSize).ascent;
  f.left = 14 + (spec.y_label.empty() ? 0 : kLabelSize + 10) + widest + 10;
  f.right = width - 22;
  f.top = spec.title.empty() ? 18 : 18 + kTitleSize + 14;
  f.bottom =
      height - (12 + tick_height + 10 + (spec.x_label.empty() ? 0 : kLabelSize + 12) + spec.extra_bottom);
  if (spec.square) {
    const double side = std::min(f.right - f.left, f.bottom - f.top);
    const double cx = (f.left + f.right) / 2;
    f.left = cx - side / 2, f.right = cx + side / 2;
    f.bottom = f.top + side;
  }
  f.x = {spec.x.lo, spec.x.hi, spec.log_x, f.left, f.right};
  f.y = {spec.y.lo, spec.y.hi, spec.log_y, f.bottom, f.top};
  return f;
}

// Grid lines behind the data: light at labelled ticks, lighter still at minor (log) ticks.
void draw_grid(cairo_t* cr, const Frame& f) {
  cairo_save(cr);
  cairo_set_line_width(cr, 0.8);
  for (bool major : {false, true}) {
    set_colour(cr, major ? kGrid : kMinorGrid);
    for (const Tick& t : f.x_ticks) {
      if (t.label.empty() == major || f.x_categorical) continue;
      const double px = f.x.map(t.value);
      cairo_move_to(cr, px, f.top), cairo_line_to(cr, px, f.bottom);
    }
    for (const Tick& t : f.y_ticks) {
      if (t.label.empty() == major) continue;
      const double py = f.y.map(t.value);
      cairo_move_to(cr, f.left, py), cairo_line_to(cr, f.right, py);
    }
    cairo_stroke(cr);
  }
  cairo_restore(cr);
}

// The frame, tick marks and numbers, axis labels and title, over the data.
void draw_axes(cairo_t* cr, const Frame& f, const FrameSpec& spec, double width) {
  cairo_save(cr);
  set_colour(cr, kInk);
  cairo_set_line_width(cr, 1.0);
  cairo_rectangle(cr, f.left, f.top, f.right - f.left, f.bottom - f.top);
  cairo_stroke(cr);
  cairo_set_line_width(cr, 0.8);
  double lowest = f.bottom;
  if (!f.x_categorical) {
    for (const Tick& t : f.x_ticks) {
      const double px = f.x.map(t.value), length = t.label.empty() ? 2.5 : 4.5;
      cairo_move_to(cr, px, f.bottom), cairo_line_to(cr, px, f.bottom + length);
    }
  }
  for (const Tick& t : f.y_ticks) {
    const double py = f.y.map(t.value), length = t.label.empty() ? 2.5 : 4.5;
    cairo_move_to(cr, f.left, py), cairo_line_to(cr, f.left - length, py);
  }
  cairo_stroke(cr);
  if (!f.x_categorical) {
    for (const Tick& t : f.x_ticks) {
      draw_text(cr, f.x.map(t.value), f.bottom + 7, t.label, kTickSize, HAlign::centre, VAlign::top);
    }
    lowest = f.bottom + 7 + measure(cr, std::string("0") + kSuperscript + "1", kTickSize).ascent;
  } else {
    lowest = f.bottom + 7 + measure(cr, "0", kTickSize).ascent + spec.extra_bottom;
  }
  double widest = 0;
  for (const Tick& t : f.y_ticks) {
    draw_text(cr, f.left - 7, f.y.map(t.value), t.label, kTickSize, HAlign::right, VAlign::middle);
    widest = std::max(widest, measure(cr, t.label, kTickSize).width);
  }
  draw_text(cr, (f.left + f.right) / 2, lowest + 10, spec.x_label, kLabelSize, HAlign::centre, VAlign::top);
  draw_text(cr, f.left - 7 - widest - 10, (f.top + f.bottom) / 2, spec.y_label, kLabelSize, HAlign::centre,
            VAlign::bottom, kInk, false, kPi / 2);
  const double centre = std::clamp((f.left + f.right) / 2, 0.0, width);
  draw_text(cr, centre, f.top - 12, spec.title,
            fitted_size(cr, spec.title, kTitleSize, 2 * std::min(centre, width - centre) - 12, true),
            HAlign::centre, VAlign::bottom, kInk, true);
  cairo_restore(cr);
}

void clip_to(cairo_t* cr, const Frame& f) {
  cairo_rectangle(cr, f.left, f.top, f.right - f.left, f.bottom - f.top);
  cairo_clip(cr);
}

// ------------------------------------------------------------------------------------------------
// Markers and the legend

void dot(cairo_t* cr, double x, double y, double radius) {
  cairo_new_sub_path(cr);
  cairo_arc(cr, x, y, radius, 0, 2 * kPi);
}

struct LegendEntry {
  std::string label;
  Colour colour;
  bool line = false, marker = true;
  double radius = 3.5;
  bool white_edge = false;
};

constexpr double kLegendPad = 7, kLegendSwatch = 22, kLegendGap = 7, kLegendRow = kLegendSize * 1.55,
                 kLegendInset = 8;

// The size of the legend box of the labelled entries ({0, 0} when none has a label).
std::pair<double, double> legend_size(cairo_t* cr, const std::vector<LegendEntry>& entries) {
  double text_w = 0;
  std::size_t rows = 0;
  for (const auto& e : entries)
    if (!e.label.empty()) text_w = std::max(text_w, measure(cr, e.label, kLegendSize).width), ++rows;
  if (rows == 0) return {0, 0};
  return {kLegendPad + kLegendSwatch + kLegendGap + text_w + kLegendPad,
          kLegendPad + kLegendRow * static_cast<double>(rows) + kLegendPad - 3};
}

// The legend box in the corner of the plot area that covers the fewest of `points` (page
// coordinates), as matplotlib's loc="best" does.
void draw_legend(cairo_t* cr, const Frame& f, const std::vector<LegendEntry>& entries,
                 const std::vector<std::pair<double, double>>& points) {
  std::vector<const LegendEntry*> shown;
  for (const auto& e : entries)
    if (!e.label.empty()) shown.push_back(&e);
  if (shown.empty()) return;
  const double pad = kLegendPad, swatch = kLegendSwatch, gap = kLegendGap, row = kLegendRow;
  const auto [w, h] = legend_size(cr, entries);
  const double inset = kLegendInset;
  if (w + 2 * inset > f.right - f.left || h + 2 * inset > f.bottom - f.top) return;  // no room
  const std::pair<double, double> corners[4] = {{f.right - inset - w, f.top + inset},
                                                {f.left + inset, f.top + inset},
                                                {f.left + inset, f.bottom - inset - h},
                                                {f.right - inset - w, f.bottom - inset - h}};
  int best = 0;
  std::size_t fewest = std::numeric_limits<std::size_t>::max();
  for (int c = 0; c < 4; ++c) {
    const auto [x0, y0] = corners[c];
    std::size_t covered = 0;
    for (const auto& [x, y] : points) covered += x >= x0 && x <= x0 + w && y >= y0 && y <= y0 + h;
    if (covered < fewest) fewest = covered, best = c;
  }
  const auto [x0, y0] = corners[best];
  cairo_save(cr);
  const double r = 3;  // rounded corners, as matplotlib's fancybox
  cairo_new_path(cr);
  cairo_arc(cr, x0 + w - r, y0 + r, r, -kPi / 2, 0);
  cairo_arc(cr, x0 + w - r, y0 + h - r, r, 0, kPi / 2);
  cairo_arc(cr, x0 + r, y0 + h - r, r, kPi / 2, kPi);
  cairo_arc(cr, x0 + r, y0 + r, r, kPi, 3 * kPi / 2);
  cairo_close_path(cr);
  set_colour(cr, kWhite, 0.85);
  cairo_fill_preserve(cr);
  set_colour(cr, kLegendEdge);
  cairo_set_line_width(cr, 0.8);
  cairo_stroke(cr);
  double y = y0 + pad + row / 2 - 1.5;
  for (const auto* e : shown) {
    const double sx = x0 + pad;
    if (e->line) {
      set_colour(cr, e->colour);
      cairo_set_line_width(cr, 1.8);
      cairo_move_to(cr, sx, y), cairo_line_to(cr, sx + swatch, y);
      cairo_stroke(cr);
    }
    if (e->marker) {
      dot(cr, sx + swatch / 2, y, std::min(e->radius, 4.0));
      set_colour(cr, e->colour);
      if (e->white_edge) {
        cairo_fill_preserve(cr);
        set_colour(cr, kWhite);
        cairo_set_line_width(cr, 0.6);
        cairo_stroke(cr);
      } else {
        cairo_fill(cr);
      }
    }
    draw_text(cr, sx + swatch + gap, y, e->label, kLegendSize, HAlign::left, VAlign::middle);
    y += row;
  }
  cairo_restore(cr);
}

// ------------------------------------------------------------------------------------------------
// Point sets

// The finite points of x0 y0 x1 y1 ...; an odd count is a caller's mistake.
std::vector<std::pair<double, double>> finite_points(const fs::path& file, const Points& points,
                                                     const char* what) {
  if (points.size() % 2 != 0)
    fail(file, std::string(what) + " holds " + std::to_string(points.size()) +
                   " numbers, not x y pairs (an even count)");
  std::vector<std::pair<double, double>> out;
  out.reserve(points.size() / 2);
  for (std::size_t i = 0; i + 1 < points.size(); i += 2)
    if (finite(points[i], points[i + 1])) out.emplace_back(points[i], points[i + 1]);
  return out;
}

// The q-quantile of values (rank floor(q (n - 1)) of the sorted values); values is reordered.
double quantile(std::vector<double>& values, double q) {
  const auto k = static_cast<std::ptrdiff_t>(std::floor(q * static_cast<double>(values.size() - 1)));
  std::nth_element(values.begin(), values.begin() + k, values.end());
  return values[static_cast<std::size_t>(k)];
}

// The box holding all but the outer `tail` of the points along each axis, so that a few outliers
// (a diverged sample at 1e6) do not squash the bulk into a dot.
void add_robust_bounds(Range& x, Range& y, const std::vector<std::pair<double, double>>& points,
                       double tail) {
  if (points.empty()) return;
  std::vector<double> xs, ys;
  xs.reserve(points.size()), ys.reserve(points.size());
  for (const auto& [px, py] : points) xs.push_back(px), ys.push_back(py);
  x.add(quantile(xs, tail)), x.add(quantile(xs, 1 - tail));
  y.add(quantile(ys, tail)), y.add(quantile(ys, 1 - tail));
}

// The spec of a square view on equal axes around the points' robust box.
FrameSpec square_view(Range x, Range y, const std::string& title) {
  FrameSpec spec;
  spec.title = title;
  spec.square = true;
  if (x.empty() || y.empty()) x = y = Range{-1, 1};
  for (Range* r : {&x, &y}) r->lo = std::max(r->lo, -1e300), r->hi = std::min(r->hi, 1e300);
  const double half =
      std::max({x.hi - x.lo, y.hi - y.lo, 1e-9 * std::max({1.0, std::abs(x.lo), std::abs(y.lo)})}) * 0.5 *
      1.08;  // 4% margin on each side
  const double cx = (x.lo + x.hi) / 2, cy = (y.lo + y.hi) / 2;
  const double h = half > 0 ? half : 1;
  spec.x = {cx - h, cx + h};
  spec.y = {cy - h, cy + h};
  return spec;
}

// Dot size and opacity for n points on a square plot: opaque and large when few, small and
// translucent when many, so that density still shows where dots pile up.
std::pair<double, double> dot_style(std::size_t n) {
  const double count = static_cast<double>(std::max<std::size_t>(n, 1));
  const double radius = std::clamp(3.0 * std::sqrt(300.0 / count), 1.25, 3.0);
  const double alpha = std::clamp(2500.0 / count, 0.35, 0.9);
  return {radius, alpha};
}

void draw_dots(cairo_t* cr, const Frame& f, const std::vector<std::pair<double, double>>& points,
               const Colour& colour, double radius, double alpha) {
  cairo_save(cr);
  clip_to(cr, f);
  set_colour(cr, colour, alpha);
  for (const auto& [x, y] : points) {
    const double px = f.x.map(x), py = f.y.map(y);
    if (px < f.left - radius || px > f.right + radius || py < f.top - radius || py > f.bottom + radius)
      continue;
    // One fill per dot, so that overlapping translucent dots darken where samples are dense.
    dot(cr, px, py, radius);
    cairo_fill(cr);
  }
  cairo_restore(cr);
}

std::vector<std::pair<double, double>> to_page(const Frame& f,
                                               const std::vector<std::pair<double, double>>& points) {
  std::vector<std::pair<double, double>> out;
  out.reserve(points.size());
  for (const auto& [x, y] : points) out.emplace_back(f.x.map(x), f.y.map(y));
  return out;
}

std::string count_label(const std::string& what, std::size_t n) {
  std::string digits = std::to_string(n), grouped;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) grouped += ',';
    grouped += digits[i];
  }
  return what + " (" + grouped + ")";
}

std::string value_label(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.4g", v);
  return with_minus_signs(buffer);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// The plots

bool available() { return true; }

std::string scatter(const fs::path& file, const Points& reference, const Points& generated,
                    const std::string& title) {
  Figure figure(file, kSquareSize, kSquareSize);
  cairo_t* cr = figure.cr();
  const auto data = finite_points(file, reference, "the reference points");
  const auto samples = finite_points(file, generated, "the generated points");
  Range x, y;
  add_robust_bounds(x, y, data, 0.005);
  add_robust_bounds(x, y, samples, 0.005);
  const FrameSpec spec = square_view(x, y, title);
  const Frame f = layout(cr, figure.width(), figure.height(), spec);
  draw_grid(cr, f);
  const auto [data_radius, data_alpha] = dot_style(data.size());
  const auto [sample_radius, sample_alpha] = dot_style(samples.size());
  draw_dots(cr, f, data, kReference, data_radius, data_alpha * 0.8);
  draw_dots(cr, f, samples, kBlue, sample_radius, sample_alpha);
  draw_axes(cr, f, spec, figure.width());
  auto page = to_page(f, data);
  const auto sample_page = to_page(f, samples);
  page.insert(page.end(), sample_page.begin(), sample_page.end());
  draw_legend(cr, f,
              {{count_label("data", data.size()), kReference, false, true, 4},
               {count_label("samples", samples.size()), kBlue, false, true, 4}},
              page);
  return figure.encode();
}

std::string pathlines(const fs::path& file, const std::vector<Points>& states, const Points& reference,
                      const std::string& title) {
  Figure figure(file, kSquareSize, kSquareSize);
  cairo_t* cr = figure.cr();
  const std::size_t values = states.empty() ? 0 : states.front().size();
  for (std::size_t k = 0; k < states.size(); ++k) {
    if (states[k].size() != values)
      fail(file, "pathline states must hold the same particles at every time: state 0 has " +
                     std::to_string(values / 2) + " points, state " + std::to_string(k) + " has " +
                     std::to_string(states[k].size() / 2));
    finite_points(file, states[k], "a pathline state");  // checks x y pairs
  }
  const std::size_t particles = values / 2, times = states.size();
  const auto data = finite_points(file, reference, "the reference points");

  std::vector<std::pair<double, double>> visited;
  for (const Points& s : states)
    for (std::size_t i = 0; i < particles; ++i)
      if (finite(s[2 * i], s[2 * i + 1])) visited.emplace_back(s[2 * i], s[2 * i + 1]);
  Range x, y;
  add_robust_bounds(x, y, data, 0.005);
  add_robust_bounds(x, y, visited, 0.005);
  const FrameSpec spec = square_view(x, y, title);
  const Frame f = layout(cr, figure.width(), figure.height(), spec);
  draw_grid(cr, f);
  const auto [data_radius, data_alpha] = dot_style(data.size());
  draw_dots(cr, f, data, kLightReference, data_radius, data_alpha * 0.6);

  // One colour per particle from the cycle (grey skipped: it is the data's).
  auto colour_of = [](std::size_t i) {
    static const int cycle[] = {0, 1, 2, 3, 4, 5, 6, 8, 9};
    return kPalette[cycle[i % (sizeof(cycle) / sizeof(cycle[0]))]];
  };
  const double line_alpha =
      std::clamp(8.0 / std::sqrt(static_cast<double>(std::max<std::size_t>(particles, 1))), 0.35, 0.85);
  cairo_save(cr);
  clip_to(cr, f);
  cairo_set_line_width(cr, 1.1);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);
  for (std::size_t i = 0; i < particles; ++i) {
    bool drawing = false;  // a non-finite state breaks the line
    for (std::size_t t = 0; t < times; ++t) {
      const double px = states[t][2 * i], py = states[t][2 * i + 1];
      if (!finite(px, py)) {
        drawing = false;
        continue;
      }
      // Far outside the view a coordinate only costs precision; clamp it to a generous box.
      const double sx = std::clamp(f.x.map(px), -1e4, 1e4), sy = std::clamp(f.y.map(py), -1e4, 1e4);
      drawing ? cairo_line_to(cr, sx, sy) : cairo_move_to(cr, sx, sy);
      drawing = true;
    }
    set_colour(cr, colour_of(i), line_alpha);
    cairo_stroke(cr);
  }
  std::vector<std::pair<double, double>> ends_page;
  if (times > 0) {
    set_colour(cr, kInk, 0.9);
    for (std::size_t i = 0; i < particles; ++i) {
      const double px = states.front()[2 * i], py = states.front()[2 * i + 1];
      if (!finite(px, py)) continue;
      dot(cr, f.x.map(px), f.y.map(py), 1.8);
      ends_page.emplace_back(f.x.map(px), f.y.map(py));
    }
    cairo_fill(cr);
    cairo_set_line_width(cr, 0.6);
    for (std::size_t i = 0; i < particles; ++i) {
      const double px = states.back()[2 * i], py = states.back()[2 * i + 1];
      if (!finite(px, py)) continue;
      dot(cr, f.x.map(px), f.y.map(py), 3.2);
      set_colour(cr, colour_of(i));
      cairo_fill_preserve(cr);
      set_colour(cr, kWhite);
      cairo_stroke(cr);
      ends_page.emplace_back(f.x.map(px), f.y.map(py));
    }
  }
  cairo_restore(cr);
  draw_axes(cr, f, spec, figure.width());
  auto page = to_page(f, data);
  page.insert(page.end(), ends_page.begin(), ends_page.end());
  std::vector<LegendEntry> legend = {{"data", kLightReference, false, true, 3.5},
                                     {"start (t = 0)", kInk, false, true, 2.2},
                                     {"end (t = 1)", kBlue, true, true, 3.5, true}};
  draw_legend(cr, f, legend, page);
  return figure.encode();
}

namespace {

// The x and y ranges of every finite point of `series` (positive where the axis is logarithmic);
// `file` names the picture when a series' x and y do not pair up.
void add_ranges(const fs::path& file, const Axes& axes, const std::vector<Series>& series, Range& x,
                Range& y) {
  for (const Series& s : series) {
    if (s.x.size() != s.y.size())
      fail(file, "series '" + s.label + "' has " + std::to_string(s.x.size()) + " x values and " +
                     std::to_string(s.y.size()) + " y values (they must pair up)");
    if (!s.error.empty() && s.error.size() != s.y.size())
      fail(file, "series '" + s.label + "' has " + std::to_string(s.error.size()) + " error bars for " +
                     std::to_string(s.y.size()) + " points");
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      const bool ok_x = std::isfinite(s.x[i]) && (!axes.log_x || s.x[i] > 0);
      const bool ok_y = std::isfinite(s.y[i]) && (!axes.log_y || s.y[i] > 0);
      if (!(ok_x && ok_y)) continue;
      x.add(s.x[i]), y.add(s.y[i]);
      const double e = s.error.empty() ? 0.0 : s.error[i];
      if (std::isfinite(e) && e > 0) {
        y.add(s.y[i] + e);
        if (!axes.log_y || s.y[i] - e > 0) y.add(s.y[i] - e);
      }
    }
  }
}

// Lines and markers of `series` inside the frame, series k in colours[k]; returns their legend
// entries, and adds the page coordinates of every drawn point to `page` (for the legend's place).
std::vector<LegendEntry> draw_series(cairo_t* cr, const Frame& f, const std::vector<Series>& series,
                                     const std::vector<Colour>& colours,
                                     std::vector<std::pair<double, double>>& page) {
  std::vector<LegendEntry> legend;
  cairo_save(cr);
  clip_to(cr, f);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);
  for (std::size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    const Colour colour = colours[k];
    std::vector<std::pair<double, double>> points;  // page coordinates; NaN marks a gap
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (f.x.valid(s.x[i]) && f.y.valid(s.y[i])) {
        points.emplace_back(std::clamp(f.x.map(s.x[i]), -1e5, 1e5), std::clamp(f.y.map(s.y[i]), -1e5, 1e5));
        page.push_back(points.back());
      } else {
        points.emplace_back(std::nan(""), std::nan(""));
      }
    }
    if (!s.error.empty()) {
      // Error bars: a vertical line from y - e to y + e with short caps (on a log axis the lower
      // end is cut at the frame where y - e <= 0).
      for (std::size_t i = 0; i < s.x.size(); ++i) {
        const double e = s.error[i];
        if (std::isnan(points[i].first) || !std::isfinite(e) || e <= 0) continue;
        const double px = points[i].first;
        const double top = std::clamp(f.y.map(s.y[i] + e), -1e5, 1e5);
        const double low = f.y.valid(s.y[i] - e) ? std::clamp(f.y.map(s.y[i] - e), -1e5, 1e5) : f.bottom + 5;
        cairo_move_to(cr, px, low), cairo_line_to(cr, px, top);
        cairo_move_to(cr, px - 3, top), cairo_line_to(cr, px + 3, top);
        cairo_move_to(cr, px - 3, low), cairo_line_to(cr, px + 3, low);
      }
      set_colour(cr, colour, 0.75);
      cairo_set_line_width(cr, 1.1);
      cairo_stroke(cr);
    }
    if (s.lines) {
      bool drawing = false;
      for (const auto& [px, py] : points) {
        if (std::isnan(px)) {
          drawing = false;
          continue;
        }
        drawing ? cairo_line_to(cr, px, py) : cairo_move_to(cr, px, py);
        drawing = true;
      }
      set_colour(cr, colour);
      cairo_set_line_width(cr, 1.8);
      cairo_stroke(cr);
    }
    // Markers shrink as points crowd: a 3000-step loss curve stays a line.
    const double radius = std::clamp(
        3.5 * std::sqrt(40.0 / std::max<double>(1.0, static_cast<double>(points.size()))), 1.0, 3.5);
    if (s.markers) {
      for (const auto& [px, py] : points)
        if (!std::isnan(px)) dot(cr, px, py, radius);
      set_colour(cr, colour);
      cairo_fill(cr);
    }
    legend.push_back({s.label, colour, s.lines, s.markers, radius + 0.5});
  }
  cairo_restore(cr);
  return legend;
}

}  // namespace

std::string line_chart(const fs::path& file, const Axes& axes, const std::vector<Series>& series) {
  Figure figure(file, kChartWidth, kChartHeight);
  cairo_t* cr = figure.cr();
  Range x, y;
  add_ranges(file, axes, series, x, y);
  FrameSpec spec;
  spec.title = axes.title, spec.x_label = axes.x_label, spec.y_label = axes.y_label;
  spec.log_x = axes.log_x, spec.log_y = axes.log_y;
  spec.x = padded(x, axes.log_x, 0.03);
  spec.y = padded(y, axes.log_y, 0.05);
  const Frame f = layout(cr, figure.width(), figure.height(), spec);
  draw_grid(cr, f);
  std::vector<Colour> colours;
  for (std::size_t k = 0; k < series.size(); ++k) colours.push_back(kPalette[k % kPaletteSize]);
  std::vector<std::pair<double, double>> page;
  const std::vector<LegendEntry> legend = draw_series(cr, f, series, colours, page);
  draw_axes(cr, f, spec, figure.width());
  draw_legend(cr, f, legend, page);
  return figure.encode();
}

std::string panel_chart(const fs::path& file, const Axes& axes, const std::vector<Panel>& panels,
                        int columns) {
  if (panels.empty()) fail(file, "a panel chart needs at least one panel");
  if (columns < 1) fail(file, "a panel chart needs at least one column, got " + std::to_string(columns));
  const auto count = static_cast<int>(panels.size());
  columns = std::min(columns, count);
  const int rows = (count + columns - 1) / columns;
  // One colour per label, in order of first appearance, the same in every panel.
  std::vector<std::string> labels;
  std::vector<LegendEntry> legend;
  Range x, y;
  for (const Panel& p : panels) {
    add_ranges(file, axes, p.series, x, y);
    for (const Series& s : p.series) {
      if (std::find(labels.begin(), labels.end(), s.label) != labels.end()) continue;
      labels.push_back(s.label);
      legend.push_back({s.label, kPalette[(labels.size() - 1) % kPaletteSize], s.lines, s.markers, 4.0});
    }
  }
  // The legend's box beside the panels (measured on a scratch picture: the figure's size depends on it).
  const auto [box_w, box_h] = legend_size(Figure(file, 10, 10).cr(), legend);
  const double legend_w = box_w > 0 ? box_w + 2 * kLegendInset + 8 : 0;
  // Every panel gets the same plot area: the axis labels are the figure's, once, beside the grid
  // (as matplotlib's supxlabel / supylabel), not the outer panels'.
  const double cell_w = 270, cell_h = 215, head = axes.title.empty() ? 8 : 44;
  const double left = axes.y_label.empty() ? 0 : kLabelSize + 16,
               below = axes.x_label.empty() ? 0 : kLabelSize + 18;
  const double grid_w = columns * cell_w, grid_h = rows * cell_h;
  const double width = left + grid_w + legend_w,
               height = std::max(head + grid_h + below, head + box_h + 2 * kLegendInset);
  Figure figure(file, width, height);
  cairo_t* cr = figure.cr();
  draw_text(cr, left + grid_w / 2, 30, axes.title,
            fitted_size(cr, axes.title, kTitleSize,
                        2 * std::min(left + grid_w / 2, width - left - grid_w / 2) - 12, true),
            HAlign::centre, VAlign::bottom, kInk, true);
  draw_text(cr, left + grid_w / 2, head + grid_h + 2, axes.x_label, kLabelSize, HAlign::centre, VAlign::top);
  draw_text(cr, left - 2, head + grid_h / 2, axes.y_label, kLabelSize, HAlign::centre, VAlign::bottom, kInk,
            false, kPi / 2);
  FrameSpec spec;
  spec.log_x = axes.log_x, spec.log_y = axes.log_y;
  spec.x = padded(x, axes.log_x, 0.04);
  spec.y = padded(y, axes.log_y, 0.06);
  for (int k = 0; k < count; ++k) {
    const Panel& p = panels[static_cast<std::size_t>(k)];
    const int row = k / columns, column = k % columns;
    spec.title = p.title;
    cairo_save(cr);
    cairo_translate(cr, left + column * cell_w, head + row * cell_h);
    Frame f = layout(cr, cell_w, cell_h, spec);
    f.top -= 14;  // panel titles sit closer than a figure's
    f.y.p1 = f.top;
    draw_grid(cr, f);
    std::vector<Colour> colours;
    for (const Series& s : p.series)
      colours.push_back(kPalette[static_cast<std::size_t>(std::find(labels.begin(), labels.end(), s.label) -
                                                          labels.begin()) %
                                 kPaletteSize]);
    std::vector<std::pair<double, double>> page;
    draw_series(cr, f, p.series, colours, page);
    draw_axes(cr, f, spec, cell_w);
    cairo_restore(cr);
  }
  if (legend_w > 0) {
    Frame box;
    box.left = left + grid_w, box.right = width, box.top = head, box.bottom = height;
    draw_legend(cr, box, legend, {});
  }
  return figure.encode();
}

std::string bar_chart(const fs::path& file, const Axes& axes, const std::vector<std::string>& labels,
                      const std::vector<double>& values, const std::vector<double>& errors) {
  if (labels.size() != values.size())
    fail(file, "a bar chart needs one value per label: " + std::to_string(labels.size()) + " labels, " +
                   std::to_string(values.size()) + " values");
  if (!errors.empty() && errors.size() != values.size())
    fail(file, "a bar chart needs no error bars or one per bar: " + std::to_string(errors.size()) + " for " +
                   std::to_string(values.size()) + " bars");
  auto error_of = [&](std::size_t i) {
    const double e = errors.empty() ? 0.0 : errors[i];
    return std::isfinite(e) && e > 0 ? e : 0.0;
  };
  Figure figure(file, kChartWidth, kChartHeight);
  cairo_t* cr = figure.cr();
  const std::size_t n = labels.size();
  // The x axis holds the labels: axes.log_x has no meaning here and is ignored.
  Range y;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    if (!(std::isfinite(v) && (!axes.log_y || v > 0))) continue;
    y.add(v);
    if (error_of(i) > 0) y.add(v + error_of(i));
  }
  FrameSpec spec;
  spec.title = axes.title, spec.x_label = axes.x_label, spec.y_label = axes.y_label;
  spec.log_y = axes.log_y;
  spec.x = {0, static_cast<double>(std::max<std::size_t>(n, 1))};
  if (axes.log_y) {
    spec.y = padded(y, true, 0.08);
  } else {
    // Bars stand on zero, which is always in view; 12% headroom for the numbers above the bars.
    Range with_zero = y;
    with_zero.add(0.0);
    with_zero.lo = std::max(with_zero.lo, -1e300), with_zero.hi = std::min(with_zero.hi, 1e300);
    if (with_zero.hi - with_zero.lo <= 0) with_zero.hi = 1;
    const double span = with_zero.hi - with_zero.lo;
    spec.y = {with_zero.lo < 0 ? with_zero.lo - 0.12 * span : 0.0,
              with_zero.hi > 0 ? with_zero.hi + 0.12 * span : 0.0};
  }
  // Labels turn 30 degrees when they would not fit side by side under their bars.
  double widest = 0;
  for (const auto& l : labels) widest = std::max(widest, measure(cr, l, kTickSize).width);
  const double slot_estimate = (figure.width() - 110) / static_cast<double>(std::max<std::size_t>(n, 1));
  const bool turned = widest > slot_estimate * 0.92;
  const double angle = turned ? kPi / 6 : 0;
  spec.extra_bottom = turned ? std::min(widest * std::sin(angle), figure.height() * 0.35) : 0;
  Frame f = layout(cr, figure.width(), figure.height(), spec);
  f.x_categorical = true;
  draw_grid(cr, f);

  const double base = axes.log_y ? spec.y.lo : 0.0;
  const double slot = (f.right - f.left) / static_cast<double>(std::max<std::size_t>(n, 1));
  cairo_save(cr);
  clip_to(cr, f);
  for (std::size_t i = 0; i < n; ++i) {
    const double v = values[i];
    if (!f.y.valid(v)) continue;
    const double x0 = f.left + slot * (static_cast<double>(i) + 0.15),
                 x1 = f.left + slot * (static_cast<double>(i) + 0.85);
    const double y0 = f.y.map(base), y1 = std::clamp(f.y.map(v), f.top - 10, f.bottom + 10);
    cairo_rectangle(cr, x0, std::min(y0, y1), x1 - x0, std::abs(y1 - y0));
    set_colour(cr, kBlue);
    cairo_fill(cr);
    if (const double e = error_of(i); e > 0) {
      const double cx = 0.5 * (x0 + x1), hi = f.y.map(v + e);
      const double lo = f.y.valid(v - e) ? f.y.map(v - e) : f.bottom;
      cairo_move_to(cr, cx, lo), cairo_line_to(cr, cx, hi);
      cairo_move_to(cr, cx - 4, hi), cairo_line_to(cr, cx + 4, hi);
      cairo_move_to(cr, cx - 4, lo), cairo_line_to(cr, cx + 4, lo);
      set_colour(cr, kInk);
      cairo_set_line_width(cr, 1.0);
      cairo_stroke(cr);
    }
  }
  if (!axes.log_y && spec.y.lo < 0 && spec.y.hi > 0) {  // bars on both sides: mark zero
    set_colour(cr, kInk);
    cairo_set_line_width(cr, 0.8);
    cairo_move_to(cr, f.left, f.y.map(0)), cairo_line_to(cr, f.right, f.y.map(0));
    cairo_stroke(cr);
  }
  cairo_restore(cr);
  draw_axes(cr, f, spec, figure.width());
  for (std::size_t i = 0; i < n; ++i) {
    const double cx = f.left + slot * (static_cast<double>(i) + 0.5);
    const double v = values[i];
    const bool shown = f.y.valid(v);
    const bool below = shown && !axes.log_y && v < 0;
    // The number sits beyond the error bar's end, where there is one.
    const double end = below ? v - error_of(i) : v + error_of(i);
    const double at = shown ? std::clamp(f.y.map(f.y.valid(end) ? end : v), f.top, f.bottom) : f.y.map(base);
    draw_text(cr, cx, below ? at + 4 : at - 4, value_label(v), kTickSize, HAlign::centre,
              below ? VAlign::top : VAlign::bottom);
    if (turned) {
      draw_text(cr, cx + 3, f.bottom + 6, labels[i], kTickSize, HAlign::right, VAlign::top, kInk, false,
                angle);
    } else {
      draw_text(cr, cx, f.bottom + 7, labels[i], kTickSize, HAlign::centre, VAlign::top);
    }
  }
  return figure.encode();
}

// ------------------------------------------------------------------------------------------------
// Image sheets

std::string image_sheet(const fs::path& file, const ImageSheet& sheet, int min_width) {
  if (format_of(file) != Format::png) fail(file, "an image sheet is a PNG (its pixels are the content)");
  const int w = sheet.width, h = sheet.height, c = sheet.channels;
  if (w < 1 || h < 1 || (c != 1 && c != 3) ||
      sheet.pixels.size() !=
          static_cast<std::size_t>(w) * static_cast<std::size_t>(h) * static_cast<std::size_t>(c))
    fail(file, "an image sheet needs width x height x channels (1 or 3) bytes, got " +
                   std::to_string(sheet.pixels.size()) + " for " + std::to_string(w) + "x" +
                   std::to_string(h) + "x" + std::to_string(c));
  if (sheet.tile_width < 1 || sheet.tile_height < 1 || sheet.pad < 0)
    fail(file, "an image sheet needs tiles of at least 1x1 pixel");
  const int pitch_x = sheet.tile_width + sheet.pad, pitch_y = sheet.tile_height + sheet.pad;
  const int columns = (w + sheet.pad) / pitch_x, rows = (h + sheet.pad) / pitch_y;

  // The layout in device pixels: every image pixel becomes scale x scale of them.
  const int scale = std::max(1, (min_width + w - 1) / w);
  constexpr double kLabelSize = 13.0, kTitleSize = 15.0;  // points
  cairo_surface_t* probe_surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1);
  cairo_t* probe = cairo_create(probe_surface);
  double label_width = 0;
  for (const auto& label : sheet.row_labels)
    label_width = std::max(label_width, measure(probe, label, kLabelSize).width);
  cairo_destroy(probe);
  cairo_surface_destroy(probe_surface);
  const double margin = 10;  // points
  // The grid's corner on a whole screen pixel, so that every image pixel is exactly scale x scale.
  auto on_pixel = [](double points) { return std::ceil(points * kPngPixelsPerPoint) / kPngPixelsPerPoint; };
  const double left = on_pixel(sheet.row_labels.empty() ? margin : label_width + 2 * margin);
  const double top = on_pixel(margin + (sheet.title.empty() ? 0 : kTitleSize + 8) +
                              (sheet.column_labels.empty() ? 0 : kLabelSize + 6));
  const double image_w = static_cast<double>(w * scale) / kPngPixelsPerPoint,
               image_h = static_cast<double>(h * scale) / kPngPixelsPerPoint;
  Figure figure(file, left + image_w + margin, top + image_h + margin);
  cairo_t* cr = figure.cr();

  // The pixels as a cairo surface (xRGB, 4 bytes a pixel), drawn scaled with the nearest filter.
  cairo_surface_t* image = cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h);
  const int stride = cairo_image_surface_get_stride(image);
  cairo_surface_flush(image);
  unsigned char* data = cairo_image_surface_get_data(image);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const unsigned char* p = sheet.pixels.data() + (static_cast<std::size_t>(y) * w + x) * c;
      const std::uint32_t r = p[0], g = c == 3 ? p[1] : p[0], b = c == 3 ? p[2] : p[0];
      const std::uint32_t value = (r << 16) | (g << 8) | b;
      std::memcpy(data + static_cast<std::size_t>(y) * stride + 4 * static_cast<std::size_t>(x), &value, 4);
    }
  cairo_surface_mark_dirty(image);
  cairo_save(cr);
  cairo_translate(cr, left, top);
  cairo_scale(cr, image_w / w, image_h / h);
  cairo_set_source_surface(cr, image, 0, 0);
  cairo_pattern_set_filter(cairo_get_source(cr), CAIRO_FILTER_NEAREST);
  cairo_rectangle(cr, 0, 0, w, h);
  cairo_fill(cr);
  cairo_restore(cr);
  cairo_surface_destroy(image);

  const double unit_x = image_w / w, unit_y = image_h / h;
  if (!sheet.title.empty())
    draw_text(cr, left + image_w / 2, margin, sheet.title,
              fitted_size(cr, sheet.title, kTitleSize, left + image_w), HAlign::centre, VAlign::top, kInk,
              true);
  for (int r = 0; r < rows && r < static_cast<int>(sheet.row_labels.size()); ++r)
    draw_text(cr, left - margin, top + (r * pitch_y + sheet.tile_height / 2.0) * unit_y, sheet.row_labels[r],
              kLabelSize, HAlign::right, VAlign::middle);
  for (int col = 0; col < columns && col < static_cast<int>(sheet.column_labels.size()); ++col) {
    const double width = sheet.tile_width * unit_x;
    draw_text(cr, left + (col * pitch_x + sheet.tile_width / 2.0) * unit_x, top - 4, sheet.column_labels[col],
              fitted_size(cr, sheet.column_labels[col], kLabelSize, width), HAlign::centre, VAlign::bottom);
  }
  return figure.encode();
}

}  // namespace pathline::plot
