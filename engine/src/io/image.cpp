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
#include "pathline/picture.hpp"

namespace pathline {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const fs::path& file, const std::string& reason) {
  throw InputError(file.string() + ": " + reason);
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

}  // namespace

Image read_image(const fs::path& file, int channels) {
  // The one decoder of PNG and JPEG, shared with the image_folder plugin (pathline/picture.hpp).
  Picture picture = decode_picture(read_file(file), file.string(), channels);
  Image image;
  image.width = picture.width;
  image.height = picture.height;
  image.channels = picture.channels;
  image.pixels = std::move(picture.pixels);
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
