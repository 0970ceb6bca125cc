// Files: atomic writes, .npy arrays, images (through stb), image grids.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "pathline/abi.hpp"

namespace pathline {

// The one atomic write: a temporary file beside `file`, fsync'd, then renamed over it, so a reader
// (or a process killed mid-write) sees the old content or the new, never a mix. Throws InputError
// naming the file when it cannot write; the old content is then untouched.
PATHLINE_API void write_file_atomic(const std::filesystem::path& file, const std::string& bytes);
// Reads a whole file; throws InputError naming it when missing or unreadable.
PATHLINE_API std::string read_file(const std::filesystem::path& file);

// NumPy's .npy format (version 1.0, little-endian, C order). Writes float32, float64 and int64
// tensors; reads what it writes. read_npy throws InputError naming the file on anything else.
PATHLINE_API void write_npy(const std::filesystem::path& file, const torch::Tensor& tensor);
PATHLINE_API torch::Tensor read_npy(const std::filesystem::path& file);

// An 8-bit picture, row-major, `channels` interleaved bytes per pixel (1 grey, 3 RGB, 4 RGBA).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;
  std::vector<std::uint8_t> pixels;
};

// PNG or JPEG (by content, not by name) decoded with stb_image; `channels` 0 keeps the file's own
// (grey, grey+alpha, RGB or RGBA), 1 or 3 converts. Throws InputError naming the file otherwise.
PATHLINE_API Image read_image(const std::filesystem::path& file, int channels = 0);
// PNG through stb_image_write, written atomically.
PATHLINE_API void write_png(const std::filesystem::path& file, const Image& image);

// A grid of images: `images` is [N, C, H, W] (C 1 or 3) with values in [lo, hi], laid out `cols`
// per row with `pad` pixels of background between them.
PATHLINE_API Image image_grid(const torch::Tensor& images, std::int64_t cols, double lo, double hi,
                              int pad = 2);

}  // namespace pathline
