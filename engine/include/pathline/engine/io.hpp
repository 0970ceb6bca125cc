// Files a run leaves: .npy arrays, PNG pictures, and the plots drawn into them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include <torch/torch.h>

#include "pathline/abi.hpp"

namespace pathline {

// NumPy's .npy format (version 1.0, little-endian, C order). Writes float32, float64 and int64
// tensors; reads what it writes. read_npy throws InputError naming the file on anything else.
PATHLINE_API void write_npy(const std::filesystem::path& file, const torch::Tensor& tensor);
PATHLINE_API torch::Tensor read_npy(const std::filesystem::path& file);

// An 8-bit RGB picture, row-major, 3 bytes per pixel.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;
};

// PNG (8-bit RGB, zlib-compressed). read_png decodes exactly what write_png writes (non-interlaced
// 8-bit RGB, any filter) and throws InputError naming the file otherwise.
PATHLINE_API void write_png(const std::filesystem::path& file, const Image& image);
PATHLINE_API Image read_png(const std::filesystem::path& file);

// Scatter plot of 2D points: reference data in grey, generated samples in blue, on a square canvas
// with a frame and grid lines at integer coordinates. Points beyond the first two dimensions are
// ignored; the view fits both sets.
PATHLINE_API Image plot_samples(const torch::Tensor& data, const torch::Tensor& generated, int size = 800);

// Pathlines: states is [steps + 1, K, 2] (the K particles at each time); drawn as polylines from
// noise (start marked) to their end points (marked), over the data in light grey.
PATHLINE_API Image plot_trajectories(const torch::Tensor& states, const torch::Tensor& data, int size = 800);

}  // namespace pathline
