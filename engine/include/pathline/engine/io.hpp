// Files: atomic writes, .npy arrays, safetensors weights, images (through stb), image grids.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
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

// Hugging Face's safetensors format: an 8-byte little-endian header length N, N bytes of JSON
// (padded with spaces to a multiple of 8) mapping each name to {"dtype", "shape", "data_offsets"},
// then the tensors' raw little-endian bytes, back to back. See docs/weights.md.
//
// Writes `tensors` in the order given (copied to the CPU, contiguous) and `metadata` as the header's
// "__metadata__" object, atomically. Dtypes: F64, F32, F16, BF16, C64, I64, I32, I16, I8, U8, BOOL.
// Throws InputError naming the file for an empty, duplicate or non-UTF-8 name, an undefined or
// sparse tensor, or a dtype the format has no name for.
PATHLINE_API void write_safetensors(const std::filesystem::path& file,
                                    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                    const std::map<std::string, std::string>& metadata = {});
// The same bytes as write_safetensors writes, in memory (`file` only names them in errors).
PATHLINE_API std::string encode_safetensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                            const std::map<std::string, std::string>& metadata,
                                            const std::filesystem::path& file);
// Reads a safetensors file, tensors in the order of their data offsets; fills `metadata` (when
// given) with the "__metadata__" object, or clears it. Checks the whole layout first: the header is
// a JSON object, every dtype is known, shapes and byte ranges agree, and the tensors cover the data
// section exactly, without gaps or overlaps. Throws InputError, "file: what is wrong", otherwise.
PATHLINE_API std::vector<std::pair<std::string, torch::Tensor>> read_safetensors(
    const std::filesystem::path& file, std::map<std::string, std::string>* metadata = nullptr);
// The same checks and result for safetensors bytes in memory; `what` names them in errors (e.g. a
// checkpoint file whose payload they are).
PATHLINE_API std::vector<std::pair<std::string, torch::Tensor>> decode_safetensors(
    const std::string& bytes, const std::filesystem::path& what,
    std::map<std::string, std::string>* metadata = nullptr);

// A module's parameters, then its buffers, under LibTorch's dotted names ("blocks.0.attn.qkv.weight"),
// detached (they share memory with the module). Undefined ones (a Linear without bias) are left out.
PATHLINE_API std::vector<std::pair<std::string, torch::Tensor>> named_weights(torch::nn::Module& module);
// Copies `tensors` by name into the module's parameters and buffers, converting dtype and device.
// Checks first, copies after: throws InputError naming `file` (where the tensors came from) and the
// first of the module's tensors the list lacks, the first name the module lacks, or the first shape
// that differs, and then leaves the module untouched.
PATHLINE_API void load_named_weights(torch::nn::Module& module,
                                     const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                     const std::filesystem::path& file);

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
