// Pictures: PNG and JPEG decoded with stb_image, PNG encoded with stb_image_write, and grids of
// image tensors (see io.hpp). Debian's libstb-dev ships stb compiled into libstb.so, so the headers
// are included here for their declarations only (no STB_*_IMPLEMENTATION).
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "pathline/engine/io.hpp"
#include "pathline/errors.hpp"

namespace pathline {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const fs::path& file, const std::string& reason) {
  throw InputError(file.string() + ": " + reason);
}

// The first bytes of every PNG file (PNG specification, section 5.2).
constexpr unsigned char kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

bool starts_with(const std::string& bytes, const unsigned char* prefix, std::size_t n) {
  return bytes.size() >= n && std::memcmp(bytes.data(), prefix, n) == 0;
}

// A JPEG starts with SOI (FF D8) and a marker (FF xx): ITU-T T.81, annex B.
bool is_jpeg(const std::string& bytes) {
  static const unsigned char soi[3] = {0xff, 0xd8, 0xff};
  return starts_with(bytes, soi, 3);
}

// A whole PNG ends with the IEND chunk: length 0, type "IEND" and its fixed CRC (PNG specification,
// 11.2.5). stb_image stops at IEND without reading that CRC and does not check the chunk CRCs, so
// this is what tells a complete file from a cut one. Bytes after IEND are ignored, as libpng does.
bool png_is_complete(const std::string& bytes) {
  static const std::string iend("\0\0\0\0IEND\xae\x42\x60\x82", 12);
  return bytes.find(iend, sizeof(kPngSignature)) != std::string::npos;
}

// stb_image decodes what it can of a cut-off JPEG and fills the rest with grey, without an error.
// A whole JPEG ends its last scan with the EOI marker (FF D9); inside entropy-coded data a 0xFF byte
// is always followed by 0x00 (T.81, B.1.1.5), so an EOI after the last start-of-scan (FF DA) marks
// a complete file. (An EXIF thumbnail brings its own EOI, but before the main image's scans.)
bool jpeg_is_complete(const std::string& bytes) {
  const std::size_t last_scan = bytes.rfind("\xff\xda");
  const std::size_t last_end = bytes.rfind("\xff\xd9");
  return last_scan != std::string::npos && last_end != std::string::npos && last_end > last_scan;
}

std::string hex_prefix(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < std::min<std::size_t>(bytes.size(), 8); ++i) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    if (i) out += ' ';
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

const char* channel_name(int channels) {
  switch (channels) {
    case 1:
      return "grey";
    case 2:
      return "grey+alpha";
    case 3:
      return "RGB";
    default:
      return "RGBA";
  }
}

std::string shape_text(const torch::Tensor& t) {
  std::string s = "[";
  for (std::int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

struct StbFree {
  void operator()(stbi_uc* p) const { stbi_image_free(p); }
};

}  // namespace

Image read_image(const fs::path& file, int channels) {
  if (channels != 0 && channels != 1 && channels != 3)
    fail(file, "cannot read as " + std::to_string(channels) +
                   " channels: ask for 0 (as stored), 1 (grey) or 3 (RGB)");
  const std::string bytes = read_file(file);
  if (bytes.empty()) fail(file, "empty file, not a PNG or JPEG image");
  const bool png = starts_with(bytes, kPngSignature, sizeof(kPngSignature));
  // stb_image also decodes BMP, GIF, TGA and more, and TGA has no signature, so that almost any
  // bytes "decode" as a TGA; only PNG and JPEG are accepted, recognised by their signatures.
  if (!png && !is_jpeg(bytes))
    fail(file, "not a PNG or JPEG image (it starts with " + hex_prefix(bytes) + ")");
  if (bytes.size() > static_cast<std::size_t>(INT_MAX)) fail(file, "image file too large (over 2 GiB)");
  if (png && !png_is_complete(bytes)) fail(file, "truncated PNG (no IEND chunk at the end)");
  if (!png && !jpeg_is_complete(bytes))
    fail(file, "truncated JPEG (no end-of-image marker after the last scan)");

  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int length = static_cast<int>(bytes.size());
  int width = 0, height = 0, stored = 0;
  if (!stbi_info_from_memory(data, length, &width, &height, &stored))
    fail(file, std::string("corrupt ") + (png ? "PNG" : "JPEG") +
                   " header (stb_image: " + stbi_failure_reason() + ")");
  // stb_image converts to the requested channel count itself; grey from colour is its luminance
  // (77 R + 150 G + 29 B) / 256, the ITU-R BT.601 weights.
  int got = 0;
  std::unique_ptr<stbi_uc, StbFree> pixels(
      stbi_load_from_memory(data, length, &width, &height, &got, channels));
  if (!pixels)
    fail(file, std::string("corrupt or truncated ") + (png ? "PNG" : "JPEG") +
                   " image (stb_image: " + stbi_failure_reason() + ")");
  Image image;
  image.width = width;
  image.height = height;
  image.channels = channels == 0 ? got : channels;
  image.pixels.assign(pixels.get(), pixels.get() + static_cast<std::size_t>(width) * height * image.channels);
  return image;
}

void write_png(const fs::path& file, const Image& image) {
  if (image.width <= 0 || image.height <= 0)
    fail(file, "cannot write an empty image (" + std::to_string(image.width) + "x" +
                   std::to_string(image.height) + ")");
  if (image.channels < 1 || image.channels > 4)
    fail(file, "cannot write an image with " + std::to_string(image.channels) +
                   " channels (1 grey, 2 grey+alpha, 3 RGB or 4 RGBA)");
  const std::size_t stride = static_cast<std::size_t>(image.width) * image.channels;
  const std::size_t expected = stride * static_cast<std::size_t>(image.height);
  if (image.pixels.size() != expected)
    fail(file, "cannot write: a " + std::to_string(image.width) + "x" + std::to_string(image.height) + " " +
                   channel_name(image.channels) + " image needs " + std::to_string(expected) +
                   " bytes, it has " + std::to_string(image.pixels.size()));
  if (stride > static_cast<std::size_t>(INT_MAX) || expected > (std::size_t{1} << 31))
    fail(file, "cannot write: image too large for PNG encoding in memory");

  // Encoded to memory, then written by the one atomic helper, so that a reader never sees half a PNG.
  std::string png;
  auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                               static_cast<std::size_t>(size));
  };
  if (!stbi_write_png_to_func(append, &png, image.width, image.height, image.channels, image.pixels.data(),
                              static_cast<int>(stride)))
    fail(file, "cannot write: PNG encoding failed (out of memory?)");
  write_file_atomic(file, png);
}

Image image_grid(const torch::Tensor& images, std::int64_t cols, double lo, double hi, int pad) {
  if (!images.defined() || images.dim() != 4 || (images.size(1) != 1 && images.size(1) != 3) ||
      images.size(0) == 0 || images.size(2) == 0 || images.size(3) == 0 || images.is_complex() ||
      images.scalar_type() == torch::kBool)
    throw InputError("image_grid: images must be a real [N, C, H, W] tensor with N >= 1 and C 1 or 3, got " +
                     (images.defined() ? shape_text(images) : std::string("an undefined tensor")));
  if (cols < 1) throw InputError("image_grid: cols must be at least 1, got " + std::to_string(cols));
  if (!(std::isfinite(lo) && std::isfinite(hi) && lo < hi))
    throw InputError("image_grid: the value range needs finite lo < hi, got [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "]");
  if (pad < 0) throw InputError("image_grid: pad must be 0 or more pixels, got " + std::to_string(pad));

  const std::int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  cols = std::min(cols, n);
  const std::int64_t rows = (n + cols - 1) / cols;
  const std::int64_t grid_w = cols * w + (cols - 1) * pad, grid_h = rows * h + (rows - 1) * pad;
  if (grid_w > INT_MAX / 4 || grid_h > INT_MAX / 4 || grid_w * grid_h > (std::int64_t{1} << 30))
    throw InputError("image_grid: a " + std::to_string(grid_w) + "x" + std::to_string(grid_h) +
                     " grid is too large for one picture");

  // [lo, hi] onto [0, 255], rounded, values outside clamped; NaN shows as lo.
  const torch::Tensor bytes = ((images.detach().to(torch::kCPU, torch::kFloat64) - lo) * (255.0 / (hi - lo)))
                                  .nan_to_num(0.0, 255.0, 0.0)
                                  .clamp(0.0, 255.0)
                                  .round()
                                  .to(torch::kUInt8)
                                  .permute({0, 2, 3, 1})  // [N, H, W, C]: interleaved channels
                                  .contiguous();
  const std::uint8_t* src = bytes.data_ptr<std::uint8_t>();

  Image grid;
  grid.width = static_cast<int>(grid_w);
  grid.height = static_cast<int>(grid_h);
  grid.channels = static_cast<int>(c);
  // White background between tiles: dark tiles (MNIST digits) stay apart, light ones read as a sheet.
  grid.pixels.assign(static_cast<std::size_t>(grid_w * grid_h * c), 255);
  const std::size_t tile_row = static_cast<std::size_t>(w * c);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t x0 = (i % cols) * (w + pad), y0 = (i / cols) * (h + pad);
    for (std::int64_t y = 0; y < h; ++y) {
      const std::uint8_t* from = src + static_cast<std::size_t>((i * h + y) * w * c);
      std::uint8_t* to = grid.pixels.data() + static_cast<std::size_t>(((y0 + y) * grid_w + x0) * c);
      std::copy(from, from + tile_row, to);
    }
  }
  return grid;
}

}  // namespace pathline
