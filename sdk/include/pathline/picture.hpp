// PNG and JPEG pictures, decoded strictly with stb_image: the one decoder of the engine
// (pathline::read_image) and of the image_folder plugin. Optional for plugins: include it only with
// stb's headers and library at hand (Debian's libstb-dev, `pkg_check_modules(STB ... stb)`); the
// header uses stb's declarations (no STB_IMAGE_IMPLEMENTATION).
#pragma once

#include <stb/stb_image.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "pathline/errors.hpp"

namespace pathline {

// Pixels row by row, `channels` bytes each (grey, grey+alpha, RGB or RGBA).
struct Picture {
  int width = 0, height = 0, channels = 0;
  std::vector<std::uint8_t> pixels;
};

namespace picture_detail {

inline bool starts_with(const std::string& bytes, const char* prefix, std::size_t n) {
  return bytes.size() >= n && std::memcmp(bytes.data(), prefix, n) == 0;
}

// The first 8 bytes in hex, for "it starts with ...".
inline std::string hex_prefix(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < bytes.size() && i < 8; ++i) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    if (i) out += ' ';
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

struct StbFree {
  void operator()(stbi_uc* pixels) const { stbi_image_free(pixels); }
};

}  // namespace picture_detail

// Decodes the bytes of a PNG or a JPEG read from `what` (named first in every error): `channels` 0
// keeps the stored count, 1 (grey: the ITU-R BT.601 luminance of colour) or 3 (RGB) converts.
// Throws InputError "what: reason" for anything else: other formats (stb also reads TGA, which has
// no signature, so almost any bytes would pass for one), files cut short (stb_image decodes what it
// can of a cut-off file and fills in the rest without complaint, so a PNG must end with its IEND
// chunk, PNG specification 11.2.5, and a JPEG's last scan must be closed by the EOI marker FF D9,
// ITU-T T.81 B.2.1), and what stb cannot decode (its reason in the message).
inline Picture decode_picture(const std::string& bytes, const std::string& what, int channels = 0) {
  using namespace picture_detail;
  auto fail = [&](const std::string& reason) -> void { throw InputError(what + ": " + reason); };
  if (channels != 0 && channels != 1 && channels != 3)
    fail("cannot read as " + std::to_string(channels) +
         " channels: ask for 0 (as stored), 1 (grey) or 3 (RGB)");
  if (bytes.empty()) fail("empty file, not a PNG or JPEG image");
  const bool png = starts_with(bytes, "\x89PNG\r\n\x1a\n", 8);
  const bool jpeg = starts_with(bytes, "\xff\xd8\xff", 3);
  if (!png && !jpeg) fail("not a PNG or JPEG image (it starts with " + hex_prefix(bytes) + ")");
  if (bytes.size() > static_cast<std::size_t>(INT_MAX)) fail("image file too large (over 2 GiB)");
  if (png && bytes.find(std::string("\0\0\0\0IEND\xae\x42\x60\x82", 12), 8) == std::string::npos)
    fail("truncated PNG (no IEND chunk at the end)");
  if (jpeg) {
    // Inside entropy-coded data a 0xFF byte is always followed by 0x00 (T.81, B.1.1.5), so an EOI
    // after the last start-of-scan (FF DA) marks a complete file.
    const std::size_t last_scan = bytes.rfind("\xff\xda"), last_end = bytes.rfind("\xff\xd9");
    if (last_scan == std::string::npos || last_end == std::string::npos || last_end < last_scan)
      fail("truncated JPEG (no end-of-image marker after the last scan)");
  }
  const char* kind = png ? "PNG" : "JPEG";
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int length = static_cast<int>(bytes.size());
  int width = 0, height = 0, stored = 0;
  if (!stbi_info_from_memory(data, length, &width, &height, &stored))
    fail(std::string("corrupt ") + kind + " header (stb_image: " + stbi_failure_reason() + ")");
  int got = 0;
  std::unique_ptr<stbi_uc, StbFree> pixels(
      stbi_load_from_memory(data, length, &width, &height, &got, channels));
  if (!pixels)
    fail(std::string("corrupt or truncated ") + kind + " image (stb_image: " + stbi_failure_reason() + ")");
  Picture picture;
  picture.width = width;
  picture.height = height;
  picture.channels = channels == 0 ? got : channels;
  picture.pixels.assign(pixels.get(),
                        pixels.get() + static_cast<std::size_t>(width) * height * picture.channels);
  return picture;
}

}  // namespace pathline
