// .npy arrays, PNG pictures and the two plots a run draws (see io.hpp).
#include "pathline/engine/io.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

#include "pathline/errors.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "io.cpp writes tensor memory as little-endian .npy data; a big-endian host needs byte swapping");

namespace pathline {
namespace fs = std::filesystem;

namespace {

// ------------------------------------------------------------------------------------------------
// Files

[[noreturn]] void fail(const fs::path& file, const std::string& reason) {
  throw InputError(file.string() + ": " + reason);
}

std::string errno_text(int err) { return std::strerror(err); }

// A piece of bytes to write.
struct Piece {
  const void* data;
  std::size_t size;
};

// Writes the pieces to a temporary file next to `file` and renames it into place, so that readers
// (and an interrupted run) see either the old file or the complete new one, never a half file.
void write_atomically(const fs::path& file, const std::vector<Piece>& pieces) {
  static std::atomic<unsigned long> counter{0};
  if (file.filename().empty()) fail(file, "cannot write: not a file name");
  const fs::path tmp = file.parent_path() / ("." + file.filename().string() + ".tmp." +
                                             std::to_string(::getpid()) + "." + std::to_string(counter++));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) fail(file, "cannot write: " + errno_text(errno));
  auto abandon = [&](const std::string& what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    fail(file, "cannot write: " + what + errno_text(err));
  };
  for (const Piece& piece : pieces) {
    const char* p = static_cast<const char*>(piece.data);
    std::size_t left = piece.size;
    while (left > 0) {
      ssize_t n = ::write(fd, p, std::min<std::size_t>(left, std::size_t{1} << 30));
      if (n < 0) {
        if (errno == EINTR) continue;
        abandon("", errno);
      }
      p += n;
      left -= static_cast<std::size_t>(n);
    }
  }
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) abandon("", errno);
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail(file, "cannot write: " + errno_text(err));
  }
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail(file, "cannot write: rename failed: " + errno_text(err));
  }
}

// An open file for reading, with its size; closes itself.
class InFile {
 public:
  explicit InFile(const fs::path& file) : path_(file) {
    std::error_code ec;
    auto status = fs::status(file, ec);
    if (status.type() == fs::file_type::not_found) fail(file, "no such file");
    if (status.type() == fs::file_type::directory) fail(file, "is a directory, not a file");
    f_ = std::fopen(file.c_str(), "rb");
    if (!f_) fail(file, "cannot open: " + errno_text(errno));
    if (std::fseek(f_, 0, SEEK_END) != 0) fail(file, "cannot read: " + errno_text(errno));
    long end = std::ftell(f_);
    if (end < 0) fail(file, "cannot read: " + errno_text(errno));
    size_ = static_cast<std::uint64_t>(end);
    std::rewind(f_);
  }
  ~InFile() {
    if (f_) std::fclose(f_);
  }
  InFile(const InFile&) = delete;
  InFile& operator=(const InFile&) = delete;

  std::uint64_t size() const { return size_; }

  // Reads exactly n bytes (the caller has checked that they exist).
  void read(void* into, std::size_t n) {
    if (n > 0 && std::fread(into, 1, n, f_) != n) fail(path_, "cannot read: unexpected end of file");
  }

 private:
  fs::path path_;
  std::FILE* f_ = nullptr;
  std::uint64_t size_ = 0;
};

// ------------------------------------------------------------------------------------------------
// .npy

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr std::size_t kNpyMagicLen = 6;
constexpr std::size_t kNpyAlign = 64;

const char* npy_descr(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return "<f4";
    case torch::kFloat64: return "<f8";
    case torch::kInt64: return "<i8";
    default: return nullptr;
  }
}

// The parsed header dictionary.
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
};

// A strict parser for the Python literal NumPy writes: {'descr': '<f4', 'fortran_order': False,
// 'shape': (3, 4), } — keys are strings, values are strings, booleans or tuples of integers.
class NpyHeaderParser {
 public:
  NpyHeaderParser(const fs::path& file, std::string_view text) : file_(file), s_(text) {}

  NpyHeader parse() {
    NpyHeader header;
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_space();
    expect('{');
    skip_space();
    while (!at('}')) {
      std::string key = parse_string();
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        if (have_descr) bad("duplicate key 'descr'");
        header.descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        if (have_fortran) bad("duplicate key 'fortran_order'");
        header.fortran_order = parse_bool();
        have_fortran = true;
      } else if (key == "shape") {
        if (have_shape) bad("duplicate key 'shape'");
        header.shape = parse_shape();
        have_shape = true;
      } else {
        bad("unexpected key '" + key + "'");
      }
      skip_space();
      if (at(',')) {
        ++i_;
        skip_space();
      } else if (!at('}')) {
        bad("expected ',' or '}' at offset " + std::to_string(i_));
      }
    }
    ++i_;
    skip_space();
    if (i_ != s_.size()) bad("unexpected text after the dictionary");
    if (!have_descr) bad("missing key 'descr'");
    if (!have_fortran) bad("missing key 'fortran_order'");
    if (!have_shape) bad("missing key 'shape'");
    return header;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const { fail(file_, "malformed .npy header: " + what); }

  bool at(char c) const { return i_ < s_.size() && s_[i_] == c; }
  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    if (!at(c)) bad(std::string("expected '") + c + "' at offset " + std::to_string(i_));
    ++i_;
  }

  std::string parse_string() {
    if (!at('\'') && !at('"')) bad("expected a string at offset " + std::to_string(i_));
    char quote = s_[i_++];
    std::string out;
    while (i_ < s_.size() && s_[i_] != quote) {
      if (s_[i_] == '\\' || s_[i_] == '\n') bad("unsupported character in a string");
      out += s_[i_++];
    }
    if (i_ >= s_.size()) bad("unterminated string");
    ++i_;
    return out;
  }

  bool parse_bool() {
    if (s_.substr(i_, 4) == "True") {
      i_ += 4;
      return true;
    }
    if (s_.substr(i_, 5) == "False") {
      i_ += 5;
      return false;
    }
    bad("expected True or False at offset " + std::to_string(i_));
  }

  std::int64_t parse_int() {
    if (i_ >= s_.size() || s_[i_] < '0' || s_[i_] > '9') bad("expected a dimension at offset " + std::to_string(i_));
    std::int64_t value = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      int digit = s_[i_++] - '0';
      if (value > (std::numeric_limits<std::int64_t>::max() - digit) / 10) bad("dimension too large");
      value = value * 10 + digit;
    }
    if (at('L')) ++i_;  // Python 2's long literals, as old NumPy wrote them
    return value;
  }

  std::vector<std::int64_t> parse_shape() {
    std::vector<std::int64_t> shape;
    expect('(');
    skip_space();
    bool trailing_comma = false;
    while (!at(')')) {
      shape.push_back(parse_int());
      skip_space();
      trailing_comma = false;
      if (at(',')) {
        ++i_;
        trailing_comma = true;
        skip_space();
      } else if (!at(')')) {
        bad("expected ',' or ')' in the shape at offset " + std::to_string(i_));
      }
      if (shape.size() > 64) bad("too many dimensions");
    }
    ++i_;
    // In Python "(5)" is the number 5, not a tuple.
    if (shape.size() == 1 && !trailing_comma) bad("shape is not a tuple");
    return shape;
  }

  const fs::path& file_;
  std::string_view s_;
  std::size_t i_ = 0;
};

// ------------------------------------------------------------------------------------------------
// PNG

constexpr std::uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

void put_be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 24));
  out.push_back(static_cast<std::uint8_t>(v >> 16));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

std::uint32_t get_be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

void put_chunk(std::vector<std::uint8_t>& out, const char* type, const std::uint8_t* data, std::size_t size) {
  put_be32(out, static_cast<std::uint32_t>(size));
  std::size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  if (size > 0) out.insert(out.end(), data, data + size);
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, out.data() + start, static_cast<uInt>(4 + size));
  put_be32(out, static_cast<std::uint32_t>(crc));
}

inline int paeth(int a, int b, int c) {
  int p = a + b - c;
  int pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  if (pb <= pc) return b;
  return c;
}

// Filters one scanline with filter `type` (bytes per pixel 3) into out.
void filter_row(int type, const std::uint8_t* row, const std::uint8_t* prior, std::size_t stride, std::uint8_t* out) {
  constexpr std::size_t bpp = 3;
  for (std::size_t i = 0; i < stride; ++i) {
    int x = row[i];
    int a = i >= bpp ? row[i - bpp] : 0;
    int b = prior[i];
    int c = i >= bpp ? prior[i - bpp] : 0;
    int pred = 0;
    switch (type) {
      case 0: pred = 0; break;
      case 1: pred = a; break;
      case 2: pred = b; break;
      case 3: pred = (a + b) / 2; break;
      default: pred = paeth(a, b, c); break;
    }
    out[i] = static_cast<std::uint8_t>(x - pred);
  }
}

// ------------------------------------------------------------------------------------------------
// Drawing

struct Rgb {
  float r, g, b;
};

constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kDataGrey{160, 160, 160};
constexpr Rgb kDataLightGrey{185, 185, 185};
constexpr Rgb kBlue{22, 82, 235};
constexpr Rgb kGrid{228, 228, 228};
constexpr Rgb kAxis{205, 205, 205};
constexpr Rgb kFrame{95, 95, 95};
constexpr Rgb kInk{40, 40, 40};

// A float canvas with alpha blending; quantised to 8 bits at the end.
class Canvas {
 public:
  explicit Canvas(int size) : w_(size), h_(size), px_(static_cast<std::size_t>(size) * size * 3, 255.f) {}

  int width() const { return w_; }
  int height() const { return h_; }

  void blend(int x, int y, const Rgb& c, float alpha) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_ || !(alpha > 0.f)) return;
    alpha = std::min(alpha, 1.f);
    float* p = &px_[(static_cast<std::size_t>(y) * w_ + x) * 3];
    p[0] += (c.r - p[0]) * alpha;
    p[1] += (c.g - p[1]) * alpha;
    p[2] += (c.b - p[2]) * alpha;
  }

  void fill_rect(int x0, int y0, int x1, int y1, const Rgb& c, float alpha = 1.f) {
    for (int y = std::max(y0, 0); y <= std::min(y1, h_ - 1); ++y)
      for (int x = std::max(x0, 0); x <= std::min(x1, w_ - 1); ++x) blend(x, y, c, alpha);
  }

  void rect_outline(int x0, int y0, int x1, int y1, const Rgb& c) {
    for (int x = x0; x <= x1; ++x) {
      blend(x, y0, c, 1.f);
      blend(x, y1, c, 1.f);
    }
    for (int y = y0 + 1; y < y1; ++y) {
      blend(x0, y, c, 1.f);
      blend(x1, y, c, 1.f);
    }
  }

  // A soft round dot centred at (cx, cy) in continuous pixel coordinates (pixel i spans [i, i+1)).
  void dot(float cx, float cy, float radius, const Rgb& c, float alpha) {
    int x0 = static_cast<int>(std::floor(cx - radius - 1)), x1 = static_cast<int>(std::ceil(cx + radius + 1));
    int y0 = static_cast<int>(std::floor(cy - radius - 1)), y1 = static_cast<int>(std::ceil(cy + radius + 1));
    for (int y = y0; y <= y1; ++y) {
      float dy = static_cast<float>(y) + 0.5f - cy;
      for (int x = x0; x <= x1; ++x) {
        float dx = static_cast<float>(x) + 0.5f - cx;
        float coverage = radius + 0.5f - std::sqrt(dx * dx + dy * dy);
        if (coverage > 0.f) blend(x, y, c, alpha * std::min(coverage, 1.f));
      }
    }
  }

  // An anti-aliased 1 px line (Wu's method) between two points in continuous pixel coordinates.
  // The end pixel is left out so that consecutive segments of a polyline do not double up.
  void line(float x0, float y0, float x1, float y1, const Rgb& c, float alpha) {
    // Work with pixel centres at integers.
    x0 -= 0.5f, y0 -= 0.5f, x1 -= 0.5f, y1 -= 0.5f;
    if (!clip(x0, y0, x1, y1)) return;
    bool steep = std::abs(y1 - y0) > std::abs(x1 - x0);
    if (steep) {
      std::swap(x0, y0);
      std::swap(x1, y1);
    }
    float dx = x1 - x0, dy = y1 - y0;
    int xs = static_cast<int>(std::lround(x0)), xe = static_cast<int>(std::lround(x1));
    int step = xe >= xs ? 1 : -1;
    float gradient = dx != 0.f ? dy / dx : 0.f;
    for (int x = xs; x != xe; x += step) {
      float y = y0 + gradient * (static_cast<float>(x) - x0);
      float base = std::floor(y);
      float frac = y - base;
      int yi = static_cast<int>(base);
      if (steep) {
        blend(yi, x, c, alpha * (1.f - frac));
        blend(yi + 1, x, c, alpha * frac);
      } else {
        blend(x, yi, c, alpha * (1.f - frac));
        blend(x, yi + 1, c, alpha * frac);
      }
    }
  }

  Image to_image() const {
    Image image;
    image.width = w_;
    image.height = h_;
    image.rgb.resize(px_.size());
    for (std::size_t i = 0; i < px_.size(); ++i)
      image.rgb[i] = static_cast<std::uint8_t>(std::lround(std::clamp(px_[i], 0.f, 255.f)));
    return image;
  }

 private:
  // Liang-Barsky clipping to a box a little larger than the canvas; false if nothing is left.
  bool clip(float& x0, float& y0, float& x1, float& y1) const {
    const float lo_x = -2.f, hi_x = static_cast<float>(w_) + 1.f;
    const float lo_y = -2.f, hi_y = static_cast<float>(h_) + 1.f;
    float t0 = 0.f, t1 = 1.f;
    float dx = x1 - x0, dy = y1 - y0;
    auto edge = [&](float p, float q) {
      if (p == 0.f) return q >= 0.f;
      float r = q / p;
      if (p < 0.f) {
        if (r > t1) return false;
        t0 = std::max(t0, r);
      } else {
        if (r < t0) return false;
        t1 = std::min(t1, r);
      }
      return true;
    };
    if (!edge(-dx, x0 - lo_x) || !edge(dx, hi_x - x0) || !edge(-dy, y0 - lo_y) || !edge(dy, hi_y - y0)) return false;
    float nx0 = x0 + t0 * dx, ny0 = y0 + t0 * dy;
    float nx1 = x0 + t1 * dx, ny1 = y0 + t1 * dy;
    x0 = nx0, y0 = ny0, x1 = nx1, y1 = ny1;
    return true;
  }

  int w_, h_;
  std::vector<float> px_;
};

// A minimal 5x7 bitmap font: just the letters the legends use.
const char* const* glyph(char ch) {
  static const char* const a[7] = {".....", ".....", ".###.", "....#", ".####", "#...#", ".####"};
  static const char* const d[7] = {"....#", "....#", ".####", "#...#", "#...#", "#...#", ".####"};
  static const char* const e[7] = {".....", ".....", ".###.", "#...#", "#####", "#....", ".###."};
  static const char* const l[7] = {".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."};
  static const char* const m[7] = {".....", ".....", "##.#.", "#.#.#", "#.#.#", "#.#.#", "#.#.#"};
  static const char* const n[7] = {".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"};
  static const char* const p[7] = {".....", ".....", "####.", "#...#", "####.", "#....", "#...."};
  static const char* const r[7] = {".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."};
  static const char* const s[7] = {".....", ".....", ".####", "#....", ".###.", "....#", "####."};
  static const char* const t[7] = {".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."};
  switch (ch) {
    case 'a': return a;
    case 'd': return d;
    case 'e': return e;
    case 'l': return l;
    case 'm': return m;
    case 'n': return n;
    case 'p': return p;
    case 'r': return r;
    case 's': return s;
    case 't': return t;
    default: return nullptr;
  }
}

int text_width(const std::string& text, int scale) { return static_cast<int>(text.size()) * 6 * scale - scale; }

void draw_text(Canvas& canvas, int x, int y, const std::string& text, int scale, const Rgb& c) {
  for (char ch : text) {
    if (const char* const* g = glyph(ch)) {
      for (int row = 0; row < 7; ++row)
        for (int col = 0; col < 5; ++col)
          if (g[row][col] == '#') canvas.fill_rect(x + col * scale, y + row * scale, x + (col + 1) * scale - 1,
                                                   y + (row + 1) * scale - 1, c);
    }
    x += 6 * scale;
  }
}

// The square part of the world that a plot shows, and its mapping onto the canvas.
struct View {
  double cx = 0, cy = 0, half = 1;  // world centre and half-width
  int size = 0, margin = 0;         // canvas size; the plot area is [margin, size - margin)

  double scale() const { return (size - 2 * margin) / (2 * half); }
  double px(double x) const { return margin + (x - (cx - half)) * scale(); }
  double py(double y) const { return margin + ((cy + half) - y) * scale(); }

  // Points [N, >=2] (any real dtype, any device) to pixel coordinates [N, 2] float32, contiguous.
  torch::Tensor map(const torch::Tensor& points) const {
    auto p = points.detach().to(torch::kCPU, torch::kFloat64);
    auto x = (p.select(1, 0) - (cx - half)) * scale() + margin;
    auto y = ((cy + half) - p.select(1, 1)) * scale() + margin;
    return torch::stack({x, y}, 1).to(torch::kFloat32).contiguous();
  }

  bool inside(float x, float y) const {
    return std::isfinite(x) && std::isfinite(y) && x >= margin && y >= margin && x <= size - margin &&
           y <= size - margin;
  }
};

// World bounds, accumulated over point sets.
struct Bounds {
  double xmin = std::numeric_limits<double>::infinity(), xmax = -std::numeric_limits<double>::infinity();
  double ymin = std::numeric_limits<double>::infinity(), ymax = -std::numeric_limits<double>::infinity();
  bool valid() const { return xmin <= xmax && ymin <= ymax; }
  void add(double x0, double x1, double y0, double y1) {
    xmin = std::min(xmin, x0), xmax = std::max(xmax, x1);
    ymin = std::min(ymin, y0), ymax = std::max(ymax, y1);
  }
};

// The finite rows of the first two columns of points [N, >=2], as float64 [M, 2] on the CPU.
torch::Tensor finite_xy(const torch::Tensor& points) {
  auto p = points.detach().to(torch::kCPU, torch::kFloat64).narrow(1, 0, 2);
  auto keep = torch::isfinite(p).all(1);
  return p.index({keep}).contiguous();
}

// Linear-interpolated quantile of a sorted contiguous float64 column.
double quantile_sorted(const double* v, std::int64_t n, double q) {
  double pos = q * static_cast<double>(n - 1);
  auto i = static_cast<std::int64_t>(std::floor(pos));
  i = std::clamp<std::int64_t>(i, 0, n - 1);
  std::int64_t j = std::min(i + 1, n - 1);
  double f = pos - static_cast<double>(i);
  return v[i] + (v[j] - v[i]) * f;
}

// Adds the bounds of the finite points [M, 2] (float64): between the lo and hi quantiles per axis.
void add_bounds(Bounds& bounds, const torch::Tensor& xy, double lo, double hi) {
  const std::int64_t n = xy.size(0);
  if (n == 0) return;
  double r[4];
  for (int axis = 0; axis < 2; ++axis) {
    auto sorted = std::get<0>(xy.select(1, axis).contiguous().sort()).contiguous();
    const double* v = sorted.data_ptr<double>();
    r[2 * axis] = quantile_sorted(v, n, lo);
    r[2 * axis + 1] = quantile_sorted(v, n, hi);
  }
  bounds.add(r[0], r[1], r[2], r[3]);
}

View make_view(const Bounds& bounds, int size) {
  View view;
  view.size = size;
  view.margin = std::max(4, size / 40);
  if (!bounds.valid()) return view;  // nothing finite to show: [-1, 1]^2
  view.cx = (bounds.xmin + bounds.xmax) / 2;
  view.cy = (bounds.ymin + bounds.ymax) / 2;
  double extent = std::max(bounds.xmax - bounds.xmin, bounds.ymax - bounds.ymin);
  // Pad by 10% of the extent on each side; a degenerate set gets a unit-sized view around it.
  const double magnitude = std::max(std::abs(view.cx), std::abs(view.cy));
  view.half = extent * 0.6;
  if (!(view.half > 1e-9 * std::max(1.0, magnitude))) view.half = std::max(1.0, 0.1 * magnitude);
  return view;
}

void check_size(const char* what, int size) {
  if (size < 32 || size > 16384)
    throw InputError(std::string(what) + ": size must be between 32 and 16384 pixels, got " + std::to_string(size));
}

std::string shape_text(const torch::Tensor& t) {
  std::string s = "[";
  for (std::int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

void check_points(const char* what, const char* name, const torch::Tensor& t) {
  if (!t.defined()) throw InputError(std::string(what) + ": " + name + " is an undefined tensor");
  if (t.dim() != 2 || t.size(1) < 2 || t.is_complex() || t.scalar_type() == torch::kBool)
    throw InputError(std::string(what) + ": " + name + " must be a real [N, D] tensor with D >= 2, got " +
                     shape_text(t));
}

// Light grid lines at integer coordinates (every 2, 5, 10, ... units when there would be too many),
// the axes slightly darker.
void draw_grid(Canvas& canvas, const View& view) {
  const double span = 2 * view.half;
  const double multiples[] = {1, 2, 5};
  double step = 1;
  for (int k = 1; span / step > 40; ++k) step = multiples[k % 3] * std::pow(10.0, k / 3);
  const int lo = view.margin, hi = view.size - view.margin - 1;
  auto lines = [&](double c0, double c1, bool vertical) {
    const double n0 = std::ceil(c0 / step), n1 = std::floor(c1 / step);
    for (int j = 0; j <= 100 && n0 + j <= n1; ++j) {
      const double v = (n0 + j) * step;
      const double p = vertical ? view.px(v) : view.py(v);
      const int i = static_cast<int>(std::floor(p));
      if (i <= lo || i >= hi) continue;
      const Rgb& c = n0 + j == 0 ? kAxis : kGrid;
      for (int q = lo; q <= hi; ++q) vertical ? canvas.blend(i, q, c, 1.f) : canvas.blend(q, i, c, 1.f);
    }
  };
  lines(view.cx - view.half, view.cx + view.half, true);
  lines(view.cy - view.half, view.cy + view.half, false);
}

void draw_frame(Canvas& canvas, const View& view) {
  canvas.rect_outline(view.margin - 1, view.margin - 1, view.size - view.margin, view.size - view.margin, kFrame);
}

// One legend entry: a swatch (drawn by the callback into the given box) and an optional word.
struct LegendEntry {
  std::string word;
  std::function<void(Canvas&, int x, int y, int box)> swatch;
};

// A small legend box in the plot corner that covers the fewest points (pixel coordinates `pts`).
void draw_legend(Canvas& canvas, const View& view, const std::vector<LegendEntry>& entries,
                 const std::vector<const torch::Tensor*>& pts) {
  const int s = std::max(1, static_cast<int>(std::lround(view.size / 700.0)));
  const int pad = 4 * s, box = 7 * s, row_h = 11 * s;
  int text_w = 0;
  for (const auto& e : entries) text_w = std::max(text_w, text_width(e.word, s));
  const int w = pad + box + 2 * s + 3 * s + text_w + pad;
  const int h = pad + static_cast<int>(entries.size()) * row_h - (row_h - box) + pad;
  const int inset = view.margin + 4 * s;
  const int left = inset, right = view.size - inset - w, top = inset, bottom = view.size - inset - h;
  if (right < left || bottom < top) return;  // no room
  const std::array<std::pair<int, int>, 4> corners = {
      std::pair{left, top}, std::pair{right, top}, std::pair{left, bottom}, std::pair{right, bottom}};
  std::array<std::int64_t, 4> counts{};
  for (const torch::Tensor* t : pts) {
    const float* p = t->data_ptr<float>();
    for (std::int64_t i = 0; i < t->size(0); ++i) {
      float x = p[2 * i], y = p[2 * i + 1];
      for (int c = 0; c < 4; ++c)
        if (x >= corners[c].first && x <= corners[c].first + w && y >= corners[c].second &&
            y <= corners[c].second + h)
          ++counts[c];
    }
  }
  int best = static_cast<int>(std::min_element(counts.begin(), counts.end()) - counts.begin());
  const int x0 = corners[best].first, y0 = corners[best].second;
  canvas.fill_rect(x0, y0, x0 + w, y0 + h, kWhite, 0.92f);
  canvas.rect_outline(x0, y0, x0 + w, y0 + h, Rgb{170, 170, 170});
  int y = y0 + pad;
  for (const auto& e : entries) {
    e.swatch(canvas, x0 + pad, y, box);
    draw_text(canvas, x0 + pad + box + 5 * s, y, e.word, s, kInk);
    y += row_h;
  }
}

// Draws every point of pixel coordinates [N, 2] float32 as a soft dot.
void draw_dots(Canvas& canvas, const View& view, const torch::Tensor& pixels, float radius, const Rgb& c,
               float alpha) {
  const float* p = pixels.data_ptr<float>();
  for (std::int64_t i = 0; i < pixels.size(0); ++i) {
    float x = p[2 * i], y = p[2 * i + 1];
    if (view.inside(x, y)) canvas.dot(x, y, radius, c, alpha);
  }
}

// Per-dot opacity so that density shows: sparse sets are opaque, dense ones translucent.
float dot_alpha(std::int64_t n, int size, double budget) {
  if (n <= 0) return 1.f;
  double area = (size / 800.0) * (size / 800.0);
  return static_cast<float>(std::clamp(budget * area / static_cast<double>(n), 0.1, 0.85));
}

// A colour per particle index: a smooth cycle through well-separated hues.
Rgb particle_colour(std::int64_t i, std::int64_t k) {
  static const Rgb anchors[] = {{214, 48, 49}, {232, 140, 20}, {60, 160, 60},
                                {20, 150, 190}, {40, 80, 220},  {160, 60, 200}};
  constexpr int n = sizeof(anchors) / sizeof(anchors[0]);
  double t = k > 0 ? static_cast<double>(i) / static_cast<double>(k) * n : 0;
  int a = static_cast<int>(std::floor(t)) % n;
  int b = (a + 1) % n;
  float f = static_cast<float>(t - std::floor(t));
  return {anchors[a].r + (anchors[b].r - anchors[a].r) * f, anchors[a].g + (anchors[b].g - anchors[a].g) * f,
          anchors[a].b + (anchors[b].b - anchors[a].b) * f};
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// .npy

void write_npy(const fs::path& file, const torch::Tensor& tensor) {
  if (!tensor.defined()) fail(file, "cannot write an undefined tensor");
  if (tensor.layout() != torch::kStrided) fail(file, "cannot write a sparse tensor");
  const char* descr = npy_descr(tensor.scalar_type());
  if (!descr)
    fail(file, std::string("cannot write a tensor of dtype ") + c10::toString(tensor.scalar_type()) +
                   " (only float32, float64 and int64)");
  torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();

  std::string shape = "(";
  for (std::int64_t i = 0; i < t.dim(); ++i) shape += (i ? ", " : "") + std::to_string(t.size(i));
  if (t.dim() == 1) shape += ",";
  shape += ")";
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad with spaces and end with '\n' so that the data starts at a multiple of 64 bytes (as NumPy does).
  const std::size_t unpadded = kNpyMagicLen + 2 + 2 + header.size() + 1;
  header.append((kNpyAlign - unpadded % kNpyAlign) % kNpyAlign, ' ');
  header += '\n';
  if (header.size() > 0xffff) fail(file, "cannot write: too many dimensions for a .npy v1.0 header");

  std::string prefix(kNpyMagic, kNpyMagicLen);
  prefix += '\x01';
  prefix += '\x00';
  prefix += static_cast<char>(header.size() & 0xff);
  prefix += static_cast<char>(header.size() >> 8);
  prefix += header;
  const std::size_t nbytes = static_cast<std::size_t>(t.numel()) * t.element_size();
  write_atomically(file, {{prefix.data(), prefix.size()}, {t.data_ptr(), nbytes}});
}

torch::Tensor read_npy(const fs::path& file) {
  InFile in(file);
  const std::uint64_t size = in.size();

  std::uint8_t pre[10] = {};
  const std::size_t got = static_cast<std::size_t>(std::min<std::uint64_t>(size, sizeof(pre)));
  in.read(pre, got);
  const std::size_t magic_seen = std::min(got, kNpyMagicLen);
  if (std::memcmp(pre, kNpyMagic, magic_seen) != 0 || size == 0) fail(file, "not a .npy file (bad magic)");
  if (got < 8) fail(file, "truncated header (file is " + std::to_string(size) + " bytes)");
  const int major = pre[6], minor = pre[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    fail(file, "unsupported .npy version " + std::to_string(major) + "." + std::to_string(minor));

  std::uint64_t header_len = 0, offset = 0;
  if (major == 1) {
    if (got < 10) fail(file, "truncated header (file is " + std::to_string(size) + " bytes)");
    header_len = pre[8] | (std::uint32_t{pre[9]} << 8);
    offset = 10;
  } else {
    if (size < 12) fail(file, "truncated header (file is " + std::to_string(size) + " bytes)");
    std::uint8_t more[2];
    in.read(more, 2);
    header_len = std::uint64_t{pre[8]} | (std::uint64_t{pre[9]} << 8) | (std::uint64_t{more[0]} << 16) |
                 (std::uint64_t{more[1]} << 24);
    offset = 12;
    if (header_len > (1u << 20)) fail(file, "malformed .npy header: header length " + std::to_string(header_len));
  }
  if (size - offset < header_len)
    fail(file, "truncated header (needs " + std::to_string(offset + header_len) + " bytes, file is " +
                   std::to_string(size) + ")");
  std::string text(static_cast<std::size_t>(header_len), '\0');
  in.read(text.data(), text.size());
  offset += header_len;
  if (text.find('\0') != std::string::npos) fail(file, "malformed .npy header: contains a NUL byte");

  NpyHeader header = NpyHeaderParser(file, text).parse();
  torch::ScalarType type;
  if (header.descr == "<f4") {
    type = torch::kFloat32;
  } else if (header.descr == "<f8") {
    type = torch::kFloat64;
  } else if (header.descr == "<i8") {
    type = torch::kInt64;
  } else {
    fail(file, "unsupported dtype '" + header.descr + "' (only '<f4', '<f8' and '<i8')");
  }
  if (header.fortran_order) fail(file, "fortran_order True is not supported (only C-order arrays)");

  std::uint64_t numel = 1;
  for (std::int64_t d : header.shape)
    if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(d), &numel))
      fail(file, "malformed .npy header: shape too large");
  std::uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(c10::elementSize(type)), &nbytes))
    fail(file, "malformed .npy header: shape too large");
  const std::uint64_t available = size - offset;
  if (available < nbytes)
    fail(file, "truncated data (expected " + std::to_string(nbytes) + " bytes, found " + std::to_string(available) +
                   ")");
  if (available > nbytes)
    fail(file, "unexpected " + std::to_string(available - nbytes) + " bytes after the data");

  torch::Tensor t = torch::empty(header.shape, torch::TensorOptions().dtype(type));
  in.read(t.data_ptr(), static_cast<std::size_t>(nbytes));
  return t;
}

// ------------------------------------------------------------------------------------------------
// PNG

void write_png(const fs::path& file, const Image& image) {
  if (image.width <= 0 || image.height <= 0)
    fail(file, "cannot write an empty image (" + std::to_string(image.width) + "x" + std::to_string(image.height) +
                   ")");
  const std::size_t stride = static_cast<std::size_t>(image.width) * 3;
  const std::size_t expected = stride * static_cast<std::size_t>(image.height);
  if (image.rgb.size() != expected)
    fail(file, "cannot write: a " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                   " image needs " + std::to_string(expected) + " bytes, it has " + std::to_string(image.rgb.size()));
  if (expected > (std::size_t{1} << 31)) fail(file, "cannot write: image too large");

  // Filter each row with the filter that minimises the sum of absolute differences (the usual
  // heuristic), which compresses plots and photos alike well.
  std::vector<std::uint8_t> filtered((stride + 1) * static_cast<std::size_t>(image.height));
  std::vector<std::uint8_t> zeros(stride, 0), candidate(stride);
  for (int y = 0; y < image.height; ++y) {
    const std::uint8_t* row = image.rgb.data() + static_cast<std::size_t>(y) * stride;
    const std::uint8_t* prior = y > 0 ? row - stride : zeros.data();
    std::uint8_t* out = filtered.data() + static_cast<std::size_t>(y) * (stride + 1);
    std::uint64_t best_cost = std::numeric_limits<std::uint64_t>::max();
    for (int type = 0; type < 5; ++type) {
      filter_row(type, row, prior, stride, candidate.data());
      std::uint64_t cost = 0;
      for (std::size_t i = 0; i < stride; ++i) cost += std::abs(static_cast<int>(static_cast<std::int8_t>(candidate[i])));
      if (cost < best_cost) {
        best_cost = cost;
        out[0] = static_cast<std::uint8_t>(type);
        std::copy(candidate.begin(), candidate.end(), out + 1);
      }
    }
  }

  uLongf compressed_size = compressBound(static_cast<uLong>(filtered.size()));
  std::vector<std::uint8_t> compressed(compressed_size);
  if (compress2(compressed.data(), &compressed_size, filtered.data(), static_cast<uLong>(filtered.size()), 6) != Z_OK)
    fail(file, "cannot write: zlib compression failed");
  compressed.resize(compressed_size);

  std::vector<std::uint8_t> out(kPngSignature, kPngSignature + 8);
  std::uint8_t ihdr[13];
  std::vector<std::uint8_t> tmp;
  put_be32(tmp, static_cast<std::uint32_t>(image.width));
  put_be32(tmp, static_cast<std::uint32_t>(image.height));
  std::copy(tmp.begin(), tmp.end(), ihdr);
  ihdr[8] = 8;    // bit depth
  ihdr[9] = 2;    // colour type: RGB
  ihdr[10] = 0;   // compression: deflate
  ihdr[11] = 0;   // filter method 0
  ihdr[12] = 0;   // no interlace
  put_chunk(out, "IHDR", ihdr, sizeof(ihdr));
  constexpr std::size_t kIdatMax = std::size_t{1} << 18;
  for (std::size_t pos = 0; pos < compressed.size(); pos += kIdatMax)
    put_chunk(out, "IDAT", compressed.data() + pos, std::min(kIdatMax, compressed.size() - pos));
  put_chunk(out, "IEND", nullptr, 0);
  write_atomically(file, {{out.data(), out.size()}});
}

Image read_png(const fs::path& file) {
  std::vector<std::uint8_t> bytes;
  {
    InFile in(file);
    if (in.size() > (std::uint64_t{1} << 32)) fail(file, "file too large for a PNG this reader accepts");
    bytes.resize(static_cast<std::size_t>(in.size()));
    in.read(bytes.data(), bytes.size());
  }
  const std::size_t size = bytes.size();
  const std::size_t sig_seen = std::min<std::size_t>(size, 8);
  if (size == 0 || std::memcmp(bytes.data(), kPngSignature, sig_seen) != 0)
    fail(file, "not a PNG file (bad signature)");
  if (size < 8) fail(file, "truncated file (" + std::to_string(size) + " bytes)");

  std::uint32_t width = 0, height = 0;
  bool seen_ihdr = false, seen_idat = false, idat_done = false, seen_iend = false;
  std::vector<std::uint8_t> idat;
  std::size_t pos = 8;
  while (pos < size) {
    if (size - pos < 12) fail(file, "truncated chunk at offset " + std::to_string(pos));
    const std::uint32_t length = get_be32(&bytes[pos]);
    const std::uint8_t* type_bytes = &bytes[pos + 4];
    std::string type(reinterpret_cast<const char*>(type_bytes), 4);
    for (char c : type)
      if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
        fail(file, "bad chunk type at offset " + std::to_string(pos));
    if (length > 0x7fffffffu) fail(file, "bad length in chunk '" + type + "'");
    if (size - pos - 12 < length) fail(file, "truncated chunk '" + type + "'");
    const std::uint8_t* data = &bytes[pos + 8];
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, type_bytes, static_cast<uInt>(4 + length));
    if (static_cast<std::uint32_t>(crc) != get_be32(data + length)) fail(file, "CRC mismatch in chunk '" + type + "'");
    pos += 12 + static_cast<std::size_t>(length);

    if (!seen_ihdr && type != "IHDR") fail(file, "first chunk is '" + type + "', not 'IHDR'");
    if (seen_idat && type != "IDAT") idat_done = true;
    if (type == "IHDR") {
      if (seen_ihdr) fail(file, "more than one 'IHDR' chunk");
      if (length != 13) fail(file, "bad 'IHDR' chunk length " + std::to_string(length));
      seen_ihdr = true;
      width = get_be32(data);
      height = get_be32(data + 4);
      if (width == 0 || height == 0 || width > 0x7fffffffu || height > 0x7fffffffu)
        fail(file, "bad image size " + std::to_string(width) + "x" + std::to_string(height));
      if (data[8] != 8) fail(file, "unsupported bit depth " + std::to_string(data[8]) + " (only 8)");
      if (data[9] != 2) fail(file, "unsupported colour type " + std::to_string(data[9]) + " (only 2, RGB)");
      if (data[10] != 0) fail(file, "unknown compression method " + std::to_string(data[10]));
      if (data[11] != 0) fail(file, "unknown filter method " + std::to_string(data[11]));
      if (data[12] != 0) fail(file, "interlaced PNGs are not supported");
    } else if (type == "IDAT") {
      if (idat_done) fail(file, "'IDAT' chunks are not consecutive");
      seen_idat = true;
      idat.insert(idat.end(), data, data + length);
    } else if (type == "IEND") {
      seen_iend = true;
      break;
    } else if (type == "PLTE") {
      if (seen_idat) fail(file, "'PLTE' chunk after the image data");
    } else if (type[0] >= 'A' && type[0] <= 'Z') {
      fail(file, "unsupported critical chunk '" + type + "'");
    }
    // Ancillary chunks (lower-case first letter) are skipped.
  }
  if (!seen_iend) fail(file, "truncated file (no 'IEND' chunk)");
  if (!seen_idat) fail(file, "no image data ('IDAT' chunk)");

  const std::uint64_t stride = std::uint64_t{width} * 3;
  const std::uint64_t raw_size = (stride + 1) * height;
  // Deflate cannot expand data by more than about 1032:1; a bigger claim is a corrupt header, and
  // checking it first keeps a tiny bad file from asking for gigabytes.
  if (raw_size / 1032 > idat.size() + 64)
    fail(file, "image data too short for a " + std::to_string(width) + "x" + std::to_string(height) + " image");
  if (raw_size > (std::uint64_t{1} << 31)) fail(file, "image too large");

  std::vector<std::uint8_t> raw(static_cast<std::size_t>(raw_size));
  z_stream zs{};
  if (inflateInit(&zs) != Z_OK) fail(file, "zlib initialisation failed");
  zs.next_in = idat.data();
  zs.avail_in = static_cast<uInt>(idat.size());
  zs.next_out = raw.data();
  zs.avail_out = static_cast<uInt>(raw.size());
  int ret = inflate(&zs, Z_FINISH);
  std::string problem;
  if (ret == Z_STREAM_END) {
    if (zs.total_out != raw_size) problem = "image data too short (" + std::to_string(zs.total_out) + " of " +
                                            std::to_string(raw_size) + " bytes)";
  } else if (ret == Z_DATA_ERROR || ret == Z_NEED_DICT) {
    problem = std::string("corrupt compressed data") + (zs.msg ? std::string(" (") + zs.msg + ")" : "");
  } else if (ret == Z_BUF_ERROR && zs.avail_out == 0) {
    problem = "more image data than a " + std::to_string(width) + "x" + std::to_string(height) + " image holds";
  } else if (ret == Z_BUF_ERROR) {
    problem = "truncated compressed data";
  } else {
    problem = "zlib error " + std::to_string(ret);
  }
  inflateEnd(&zs);
  if (!problem.empty()) fail(file, problem);

  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  image.rgb.resize(static_cast<std::size_t>(stride * height));
  const std::size_t st = static_cast<std::size_t>(stride);
  std::vector<std::uint8_t> zeros(st, 0);
  constexpr std::size_t bpp = 3;
  for (std::size_t y = 0; y < height; ++y) {
    const std::uint8_t* in = raw.data() + y * (st + 1);
    const int filter = in[0];
    ++in;
    std::uint8_t* row = image.rgb.data() + y * st;
    const std::uint8_t* prior = y > 0 ? row - st : zeros.data();
    switch (filter) {
      case 0: std::copy(in, in + st, row); break;
      case 1:
        for (std::size_t i = 0; i < st; ++i) row[i] = static_cast<std::uint8_t>(in[i] + (i >= bpp ? row[i - bpp] : 0));
        break;
      case 2:
        for (std::size_t i = 0; i < st; ++i) row[i] = static_cast<std::uint8_t>(in[i] + prior[i]);
        break;
      case 3:
        for (std::size_t i = 0; i < st; ++i) {
          int a = i >= bpp ? row[i - bpp] : 0;
          row[i] = static_cast<std::uint8_t>(in[i] + (a + prior[i]) / 2);
        }
        break;
      case 4:
        for (std::size_t i = 0; i < st; ++i) {
          int a = i >= bpp ? row[i - bpp] : 0;
          int c = i >= bpp ? prior[i - bpp] : 0;
          row[i] = static_cast<std::uint8_t>(in[i] + paeth(a, prior[i], c));
        }
        break;
      default: fail(file, "bad filter type " + std::to_string(filter) + " in row " + std::to_string(y));
    }
  }
  return image;
}

// ------------------------------------------------------------------------------------------------
// Plots

Image plot_samples(const torch::Tensor& data, const torch::Tensor& generated, int size) {
  check_size("plot_samples", size);
  check_points("plot_samples", "data", data);
  check_points("plot_samples", "generated", generated);
  const torch::Tensor data_xy = finite_xy(data), gen_xy = finite_xy(generated);

  // Robust bounds per set, so that a few outliers (in either set) do not shrink the picture.
  Bounds bounds;
  add_bounds(bounds, data_xy, 0.005, 0.995);
  add_bounds(bounds, gen_xy, 0.005, 0.995);
  const View view = make_view(bounds, size);

  Canvas canvas(size);
  draw_grid(canvas, view);
  const torch::Tensor data_px = view.map(data_xy), gen_px = view.map(gen_xy);
  const float r = static_cast<float>(std::max(1.0, 1.2 * size / 800.0));
  draw_dots(canvas, view, data_px, r, kDataGrey, dot_alpha(data_px.size(0), size, 5000));
  draw_dots(canvas, view, gen_px, r * 1.1f, kBlue, dot_alpha(gen_px.size(0), size, 3500));
  draw_frame(canvas, view);

  std::vector<LegendEntry> legend = {
      {"data", [](Canvas& c, int x, int y, int box) { c.fill_rect(x, y, x + box - 1, y + box - 1, kDataGrey); }},
      {"samples", [](Canvas& c, int x, int y, int box) { c.fill_rect(x, y, x + box - 1, y + box - 1, kBlue); }},
  };
  draw_legend(canvas, view, legend, {&data_px, &gen_px});
  return canvas.to_image();
}

Image plot_trajectories(const torch::Tensor& states, const torch::Tensor& data, int size) {
  check_size("plot_trajectories", size);
  if (!states.defined() || states.dim() != 3 || states.size(2) < 2 || states.is_complex() ||
      states.scalar_type() == torch::kBool)
    throw InputError("plot_trajectories: states must be a real [steps + 1, K, 2] tensor, got " +
                     (states.defined() ? shape_text(states) : std::string("an undefined tensor")));
  check_points("plot_trajectories", "data", data);
  const std::int64_t steps1 = states.size(0), k = states.size(1);
  const torch::Tensor data_xy = finite_xy(data);
  const torch::Tensor flat = states.detach().to(torch::kCPU, torch::kFloat64).narrow(2, 0, 2).reshape({-1, 2});
  const torch::Tensor state_xy = finite_xy(flat);

  // Every (finite) state is in view; the data by its robust bounds.
  Bounds bounds;
  add_bounds(bounds, data_xy, 0.005, 0.995);
  add_bounds(bounds, state_xy, 0.0, 1.0);
  const View view = make_view(bounds, size);

  Canvas canvas(size);
  draw_grid(canvas, view);
  const torch::Tensor data_px = view.map(data_xy);
  const float r = static_cast<float>(std::max(1.0, 1.2 * size / 800.0));
  draw_dots(canvas, view, data_px, r, kDataLightGrey, std::min(0.6f, dot_alpha(data_px.size(0), size, 4000)));

  // Pixel coordinates of every state, [steps + 1, K, 2], with non-finite states left as NaN.
  const torch::Tensor states_px = view.map(flat).reshape({steps1, k, 2}).contiguous();
  const float* p = states_px.data_ptr<float>();
  auto at = [&](std::int64_t t, std::int64_t i) { return p + (t * k + i) * 2; };
  const float line_alpha = static_cast<float>(std::clamp(60.0 / std::sqrt(static_cast<double>(std::max<std::int64_t>(k, 1))), 0.35, 0.9));
  for (std::int64_t i = 0; i < k; ++i) {
    const Rgb c = particle_colour(i, k);
    for (std::int64_t t = 0; t + 1 < steps1; ++t) {
      const float* a = at(t, i);
      const float* b = at(t + 1, i);
      if (!std::isfinite(a[0]) || !std::isfinite(a[1]) || !std::isfinite(b[0]) || !std::isfinite(b[1])) continue;
      // Fade in with time: faint near the noise, strong near the data.
      const float fade = 0.3f + 0.7f * static_cast<float>(t + 1) / static_cast<float>(std::max<std::int64_t>(steps1 - 1, 1));
      canvas.line(a[0], a[1], b[0], b[1], c, line_alpha * fade);
    }
  }
  const float mark = static_cast<float>(std::max(1.2, 1.5 * size / 800.0));
  for (std::int64_t i = 0; i < k && steps1 > 0; ++i) {
    const float* a = at(0, i);
    if (std::isfinite(a[0]) && std::isfinite(a[1])) canvas.dot(a[0], a[1], mark * 0.8f, kInk, 0.9f);
  }
  for (std::int64_t i = 0; i < k && steps1 > 0; ++i) {
    const float* b = at(steps1 - 1, i);
    if (std::isfinite(b[0]) && std::isfinite(b[1])) canvas.dot(b[0], b[1], mark, particle_colour(i, k), 1.f);
  }
  draw_frame(canvas, view);

  const torch::Tensor ends = k > 0 && steps1 > 0 ? states_px.select(0, steps1 - 1).contiguous() : states_px.reshape({-1, 2});
  const torch::Tensor starts = k > 0 && steps1 > 0 ? states_px.select(0, 0).contiguous() : states_px.reshape({-1, 2});
  std::vector<LegendEntry> legend = {
      {"data", [](Canvas& c, int x, int y, int box) { c.fill_rect(x, y, x + box - 1, y + box - 1, kDataLightGrey); }},
      {"start", [](Canvas& c, int x, int y, int box) { c.dot(x + box / 2.f, y + box / 2.f, box / 3.f, kInk, 1.f); }},
      {"end", [](Canvas& c, int x, int y, int box) {
         c.dot(x + box / 2.f, y + box / 2.f, box / 2.5f, particle_colour(0, 3), 1.f);
       }},
  };
  draw_legend(canvas, view, legend, {&data_px, &starts, &ends});
  return canvas.to_image();
}

}  // namespace pathline
