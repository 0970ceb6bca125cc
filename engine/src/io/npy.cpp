// NumPy's .npy arrays: a strict header parser, float32/float64/int64 data (io.hpp).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "file_access.hpp"
#include "pathline/engine/io.hpp"
#include "pathline/errors.hpp"

namespace pathline {
namespace fs = std::filesystem;
using namespace io_detail;

namespace {

// ------------------------------------------------------------------------------------------------
// .npy

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr std::size_t kNpyMagicLen = 6;
constexpr std::size_t kNpyAlign = 64;

const char* npy_descr(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32:
      return "<f4";
    case torch::kFloat64:
      return "<f8";
    case torch::kInt64:
      return "<i8";
    default:
      return nullptr;
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
    if (i_ >= s_.size() || s_[i_] < '0' || s_[i_] > '9')
      bad("expected a dimension at offset " + std::to_string(i_));
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
  std::string header =
      std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad with spaces and end with '\n' so that the data starts at a multiple of 64 bytes (as NumPy does).
  const std::size_t unpadded = kNpyMagicLen + 2 + 2 + header.size() + 1;
  header.append((kNpyAlign - unpadded % kNpyAlign) % kNpyAlign, ' ');
  header += '\n';
  if (header.size() > 0xffff) fail(file, "cannot write: too many dimensions for a .npy v1.0 header");

  const std::size_t nbytes = static_cast<std::size_t>(t.numel()) * t.element_size();
  std::string bytes(kNpyMagic, kNpyMagicLen);
  bytes.reserve(kNpyMagicLen + 4 + header.size() + nbytes);
  bytes += '\x01';
  bytes += '\x00';
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>(header.size() >> 8);
  bytes += header;
  bytes.append(static_cast<const char*>(t.data_ptr()), nbytes);
  write_file_atomic(file, bytes);
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
    if (header_len > (1u << 20))
      fail(file, "malformed .npy header: header length " + std::to_string(header_len));
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
    fail(file, "truncated data (expected " + std::to_string(nbytes) + " bytes, found " +
                   std::to_string(available) + ")");
  if (available > nbytes)
    fail(file, "unexpected " + std::to_string(available - nbytes) + " bytes after the data");

  torch::Tensor t = torch::empty(header.shape, torch::TensorOptions().dtype(type));
  in.read(t.data_ptr(), static_cast<std::size_t>(nbytes));
  return t;
}

}  // namespace pathline
