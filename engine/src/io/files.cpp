// Files: the one atomic write, whole-file reads, NumPy's .npy arrays and safetensors weights (see
// io.hpp). Pictures are in image.cpp; charts are the pathline_plot library beside the engine, in engine/plot.
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

#include "pathline/engine/io.hpp"
#include "pathline/errors.hpp"

static_assert(
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
    "files.cpp writes tensor memory as little-endian .npy and safetensors data; a big-endian host needs "
    "byte swapping");

namespace pathline {
namespace fs = std::filesystem;

namespace {

// ------------------------------------------------------------------------------------------------
// Files

[[noreturn]] void fail(const fs::path& file, const std::string& reason) {
  throw InputError(file.string() + ": " + reason);
}

std::string errno_text(int err) { return std::strerror(err); }

// Flushes a folder's entry table to disk, so that a rename inside it survives a power cut (rename
// alone is atomic for readers but not durable). Filesystems that cannot sync a folder say EINVAL.
int sync_folder(const fs::path& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int rc = ::fsync(fd) == 0 || errno == EINVAL || errno == EROFS ? 0 : errno;
  ::close(fd);
  return rc;
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

// Bytes already in memory, read like a file (a checkpoint's payload); `what` names them in errors.
class InBytes {
 public:
  InBytes(const std::string& bytes, fs::path what) : bytes_(bytes), what_(std::move(what)) {}
  std::uint64_t size() const { return bytes_.size(); }
  void read(void* into, std::size_t n) {
    if (n > bytes_.size() - at_) fail(what_, "cannot read: unexpected end of the data");
    std::memcpy(into, bytes_.data() + at_, n);
    at_ += n;
  }

 private:
  const std::string& bytes_;
  fs::path what_;
  std::size_t at_ = 0;
};

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

// ------------------------------------------------------------------------------------------------
// safetensors

using ordered_json = nlohmann::ordered_json;

constexpr char kMetadataKey[] = "__metadata__";
// The reference implementation refuses headers above 100 MB; so do we, before allocating one.
constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;
constexpr std::size_t kMaxDims = 64;

struct SafetensorsDtype {
  const char* name;
  torch::ScalarType type;
};

constexpr SafetensorsDtype kSafetensorsDtypes[] = {
    {"F64", torch::kFloat64},   {"F32", torch::kFloat32},      {"F16", torch::kFloat16},
    {"BF16", torch::kBFloat16}, {"C64", torch::kComplexFloat}, {"I64", torch::kInt64},
    {"I32", torch::kInt32},     {"I16", torch::kInt16},        {"I8", torch::kInt8},
    {"U8", torch::kUInt8},      {"BOOL", torch::kBool},
};
// Dtypes of the format that this LibTorch has no tensor type for.
constexpr const char* kUnsupportedSafetensorsDtypes[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2"};

const char* safetensors_dtype_name(torch::ScalarType type) {
  for (const auto& d : kSafetensorsDtypes)
    if (d.type == type) return d.name;
  return nullptr;
}

std::string safetensors_dtype_list() {
  std::string out;
  for (const auto& d : kSafetensorsDtypes) out += std::string(out.empty() ? "" : ", ") + d.name;
  return out;
}

// A name or other text from a file, quoted for a one-line message: control bytes escaped, very long
// text shortened.
std::string shown(std::string_view text) {
  constexpr std::size_t kMax = 200;
  std::string out = "'";
  for (std::size_t i = 0; i < text.size() && i < kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (text.size() > kMax) out += "...";
  return out + "'";
}

std::string shape_text(c10::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// One tensor's entry in a header, checked.
struct SafetensorsEntry {
  std::string name;
  torch::ScalarType type;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;
};

// A non-negative JSON integer that fits in int64 (or nothing).
std::optional<std::uint64_t> json_size(const ordered_json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  const auto v = value.get<std::uint64_t>();
  if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
  return v;
}

SafetensorsEntry parse_safetensors_entry(const fs::path& file, const std::string& name,
                                         const ordered_json& info, std::uint64_t data_size) {
  const std::string tensor = "tensor " + shown(name);
  if (name.empty()) fail(file, "a tensor has an empty name");
  if (!info.is_object()) fail(file, tensor + ": its entry is not a JSON object");
  SafetensorsEntry entry;
  entry.name = name;

  const auto dtype = info.find("dtype");
  if (dtype == info.end()) fail(file, tensor + ": no \"dtype\"");
  if (!dtype->is_string()) fail(file, tensor + ": \"dtype\" is not a string");
  const auto& dtype_name = dtype->get_ref<const std::string&>();
  bool known = false;
  for (const auto& d : kSafetensorsDtypes) {
    if (dtype_name == d.name) {
      entry.type = d.type;
      known = true;
    }
  }
  if (!known) {
    for (const char* d : kUnsupportedSafetensorsDtypes)
      if (dtype_name == d)
        fail(file, tensor + ": dtype " + shown(dtype_name) + " is not supported by LibTorch");
    fail(file,
         tensor + ": unknown dtype " + shown(dtype_name) + " (known: " + safetensors_dtype_list() + ")");
  }

  const auto shape = info.find("shape");
  if (shape == info.end()) fail(file, tensor + ": no \"shape\"");
  if (!shape->is_array()) fail(file, tensor + ": \"shape\" is not a list");
  if (shape->size() > kMaxDims)
    fail(file, tensor + ": more than " + std::to_string(kMaxDims) + " dimensions");
  for (const auto& dim : *shape) {
    if (dim.is_number_integer() && !dim.is_number_unsigned())
      fail(file,
           tensor + ": negative dimension " + std::to_string(dim.get<std::int64_t>()) + " in its shape");
    const auto size = json_size(dim);
    if (!size) fail(file, tensor + ": \"shape\" holds " + shown(dim.dump()) + ", not a dimension");
    entry.shape.push_back(static_cast<std::int64_t>(*size));
  }
  // The element count; the product of the nonzero dimensions must fit as well, as LibTorch
  // multiplies them all.
  std::uint64_t numel = 1, nonzero = 1;
  for (std::int64_t d : entry.shape) {
    if (d != 0 && (__builtin_mul_overflow(nonzero, static_cast<std::uint64_t>(d), &nonzero) ||
                   nonzero > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())))
      fail(file, tensor + ": shape " + shape_text(entry.shape) + " is too large");
    numel *= static_cast<std::uint64_t>(d);
  }
  const std::uint64_t nbytes = numel * c10::elementSize(entry.type);
  if (nbytes / c10::elementSize(entry.type) != numel)
    fail(file, tensor + ": shape " + shape_text(entry.shape) + " is too large");

  const auto offsets = info.find("data_offsets");
  if (offsets == info.end()) fail(file, tensor + ": no \"data_offsets\"");
  if (!offsets->is_array() || offsets->size() != 2)
    fail(file, tensor + ": \"data_offsets\" is not a list of two offsets");
  for (const auto& o : *offsets) {
    if (o.is_number_integer() && !o.is_number_unsigned())
      fail(file,
           tensor + ": negative offset " + std::to_string(o.get<std::int64_t>()) + " in \"data_offsets\"");
    if (!json_size(o)) fail(file, tensor + ": \"data_offsets\" holds " + shown(o.dump()) + ", not an offset");
  }
  entry.begin = *json_size((*offsets)[0]);
  entry.end = *json_size((*offsets)[1]);
  const std::string range = "[" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) + "]";
  if (entry.end < entry.begin) fail(file, tensor + ": data_offsets " + range + " end before they begin");
  if (entry.end > data_size)
    fail(file, tensor + ": data_offsets " + range + " lie outside the data section (" +
                   std::to_string(data_size) + " bytes)");
  if (entry.end - entry.begin != nbytes)
    fail(file, tensor + ": data_offsets " + range + " span " + std::to_string(entry.end - entry.begin) +
                   " bytes, but shape " + shape_text(entry.shape) + " of " + dtype_name + " needs " +
                   std::to_string(nbytes));
  return entry;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Files

void write_file_atomic(const fs::path& file, const std::string& bytes) {
  static std::atomic<unsigned long> counter{0};
  if (file.filename().empty() || file.filename() == "." || file.filename() == "..")
    fail(file, "cannot write: not a file name");
  std::error_code ec;
  if (fs::is_directory(file, ec)) fail(file, "cannot write: is a directory, not a file");
  const fs::path folder = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  // The temporary lives in the target's folder: rename(2) is atomic only within one filesystem.
  // The process id and a counter keep concurrent writers (threads or processes) apart; O_EXCL
  // makes sure that no existing file is ever reused.
  const fs::path tmp = folder / ("." + file.filename().string() + ".tmp." + std::to_string(::getpid()) + "." +
                                 std::to_string(counter++));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) fail(file, "cannot write: " + errno_text(errno));
  auto abandon = [&](const std::string& step, int err, bool open) {
    if (open) ::close(fd);
    ::unlink(tmp.c_str());
    fail(file, "cannot write: " + step + errno_text(err));
  };
  const char* p = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, std::min<std::size_t>(left, std::size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      abandon("", errno, true);
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  // The data must be on disk before the rename publishes it; otherwise a crash right after the
  // rename can leave an empty file under the final name.
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) abandon("fsync failed: ", errno, true);
  if (::close(fd) != 0) abandon("", errno, false);
  if (::rename(tmp.c_str(), file.c_str()) != 0) abandon("rename failed: ", errno, false);
  if (const int err = sync_folder(folder))
    fail(file, "written, but its folder could not be synced to disk: " + errno_text(err));
}

std::string read_file(const fs::path& file) {
  InFile in(file);
  if (in.size() > std::numeric_limits<std::size_t>::max() / 2) fail(file, "cannot read: file too large");
  std::string bytes(static_cast<std::size_t>(in.size()), '\0');
  in.read(bytes.data(), bytes.size());
  return bytes;
}

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

// ------------------------------------------------------------------------------------------------
// safetensors

std::string encode_safetensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata, const fs::path& file) {
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[kMetadataKey] = std::move(meta);
  }
  std::vector<torch::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  std::unordered_set<std::string> names;
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const std::string what = "cannot write tensor " + shown(name) + ": ";
    if (name.empty()) fail(file, "cannot write a tensor with an empty name");
    if (name == kMetadataKey) fail(file, what + "the name is reserved for the metadata");
    if (!names.insert(name).second) fail(file, what + "the name is given twice");
    if (!tensor.defined()) fail(file, what + "it is undefined");
    if (tensor.layout() != torch::kStrided) fail(file, what + "it is not a dense tensor");
    const char* dtype = safetensors_dtype_name(tensor.scalar_type());
    if (!dtype)
      fail(file, what + "dtype " + c10::toString(tensor.scalar_type()) + " is not one of " +
                     safetensors_dtype_list());
    torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    const std::uint64_t nbytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
    ordered_json info = ordered_json::object();
    info["dtype"] = dtype;
    info["shape"] = t.sizes().vec();
    info["data_offsets"] = {offset, offset + nbytes};
    header[name] = std::move(info);
    offset += nbytes;
    contiguous.push_back(std::move(t));
  }
  std::string text;
  try {
    text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const nlohmann::json::exception&) {
    fail(file, "cannot write: a tensor name or metadata text is not valid UTF-8");
  }
  // The data section starts at a multiple of 8 bytes, as in the reference implementation.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::string bytes;
  bytes.reserve(8 + text.size() + offset);
  for (int i = 0; i < 8; ++i)
    bytes += static_cast<char>((static_cast<std::uint64_t>(text.size()) >> (8 * i)) & 0xff);
  bytes += text;
  for (const auto& t : contiguous)
    bytes.append(static_cast<const char*>(t.data_ptr()),
                 static_cast<std::size_t>(t.numel()) * t.element_size());
  return bytes;
}

void write_safetensors(const fs::path& file,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_file_atomic(file, encode_safetensors(tensors, metadata, file));
}

namespace {

// The one reader behind read_safetensors (a file) and decode_safetensors (bytes in memory): `in`
// gives size() and read(into, n); `file` names the source in errors.
template <class Source>
std::vector<std::pair<std::string, torch::Tensor>> read_safetensors_from(
    Source& in, const fs::path& file, std::map<std::string, std::string>* metadata) {
  if (metadata) metadata->clear();
  const std::uint64_t size = in.size();
  if (size < 8)
    fail(file,
         "not a safetensors file: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  std::uint8_t prefix[8];
  in.read(prefix, 8);
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= std::uint64_t{prefix[i]} << (8 * i);
  if (header_len > size - 8)
    fail(file, "header length " + std::to_string(header_len) + " runs beyond the end of the file (" +
                   std::to_string(size) + " bytes)");
  if (header_len > kMaxSafetensorsHeader)
    fail(file, "header length " + std::to_string(header_len) + " is over the limit of " +
                   std::to_string(kMaxSafetensorsHeader) + " bytes");
  std::string text(static_cast<std::size_t>(header_len), '\0');
  in.read(text.data(), text.size());
  const std::uint64_t data_size = size - 8 - header_len;

  // Parse, noting any key given twice in one object (the parser would keep the last silently).
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  ordered_json header;
  try {
    header = ordered_json::parse(text, [&](int, ordered_json::parse_event_t event, ordered_json& parsed) {
      if (event == ordered_json::parse_event_t::object_start) {
        open_objects.emplace_back();
      } else if (event == ordered_json::parse_event_t::object_end) {
        if (!open_objects.empty()) open_objects.pop_back();
      } else if (event == ordered_json::parse_event_t::key && !open_objects.empty() && parsed.is_string()) {
        if (!open_objects.back().insert(parsed.template get<std::string>()).second && duplicate.empty())
          duplicate = parsed.template get<std::string>();
      }
      return true;
    });
  } catch (const nlohmann::json::exception& e) {
    std::string why = e.what();
    if (const auto close = why.find("] "); why.rfind("[json.exception", 0) == 0 && close != std::string::npos)
      why.erase(0, close + 2);
    for (char& c : why)
      if (c == '\n' || c == '\r') c = ' ';
    fail(file, "header is not valid JSON: " + why);
  }
  if (!header.is_object()) fail(file, "header is not a JSON object");
  if (!duplicate.empty()) fail(file, "header gives the key " + shown(duplicate) + " twice");

  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) {
      if (!info.is_object()) fail(file, "\"__metadata__\" is not a JSON object");
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) fail(file, "\"__metadata__\" value of " + shown(key) + " is not a string");
        if (metadata) (*metadata)[key] = value.template get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_safetensors_entry(file, name, info, data_size));
  }

  // The tensors must tile the data section: sorted by offset, each begins where the last ended.
  std::stable_sort(entries.begin(), entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const auto& e : entries) {
    const std::string at =
        "tensor " + shown(e.name) + " begins at byte " + std::to_string(e.begin) + " of the data section";
    if (e.begin < covered)
      fail(file, at + ", inside tensor " + shown(previous->name) + " (which ends at " +
                     std::to_string(covered) + "): overlapping tensors");
    if (e.begin > covered)
      fail(file, at + ", leaving bytes " + std::to_string(covered) + " to " + std::to_string(e.begin) +
                     " unused: tensors must cover the data section contiguously");
    covered = e.end;
    if (e.end > e.begin) previous = &e;
  }
  if (covered != data_size)
    fail(file, "the tensors cover " + std::to_string(covered) + " of the data section's " +
                   std::to_string(data_size) + " bytes: tensors must cover the data section exactly");

  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.reserve(entries.size());
  for (const auto& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.type));
    in.read(t.data_ptr(), static_cast<std::size_t>(e.end - e.begin));
    if (e.type == torch::kBool) {
      const auto* p = static_cast<const std::uint8_t*>(t.data_ptr());
      for (std::uint64_t i = 0; i < e.end - e.begin; ++i)
        if (p[i] > 1)
          fail(file, "tensor " + shown(e.name) + ": BOOL byte " + std::to_string(i) + " is " +
                         std::to_string(p[i]) + ", not 0 or 1");
    }
    out.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> read_safetensors(
    const fs::path& file, std::map<std::string, std::string>* metadata) {
  InFile in(file);
  return read_safetensors_from(in, file, metadata);
}

std::vector<std::pair<std::string, torch::Tensor>> decode_safetensors(
    const std::string& bytes, const fs::path& what, std::map<std::string, std::string>* metadata) {
  InBytes in(bytes, what);
  return read_safetensors_from(in, what, metadata);
}

std::vector<std::pair<std::string, torch::Tensor>> named_weights(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value().detach());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    if (item.value().defined()) out.emplace_back(item.key(), item.value().detach());
  return out;
}

void load_named_weights(torch::nn::Module& module,
                        const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                        const fs::path& file) {
  std::unordered_map<std::string, const torch::Tensor*> given;
  for (const auto& [name, tensor] : tensors)
    if (!given.emplace(name, &tensor).second) fail(file, "tensor " + shown(name) + " is given twice");
  const auto targets = named_weights(module);
  std::unordered_set<std::string> wanted;
  for (const auto& [name, target] : targets) {
    wanted.insert(name);
    if (!given.count(name)) fail(file, "no tensor " + shown(name) + ", which the model has");
  }
  for (const auto& [name, tensor] : tensors)
    if (!wanted.count(name))
      fail(file, "unexpected tensor " + shown(name) + ": the model has no such parameter or buffer");
  for (const auto& [name, target] : targets) {
    const torch::Tensor& source = *given.at(name);
    if (!source.defined()) fail(file, "tensor " + shown(name) + " is undefined");
    if (source.sizes() != target.sizes())
      fail(file, "tensor " + shown(name) + " is shaped " + shape_text(source.sizes()) + ", the model's is " +
                     shape_text(target.sizes()));
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : targets) {
    torch::Tensor t = target;  // shares the module's storage
    t.copy_(*given.at(name));
  }
}

}  // namespace pathline
