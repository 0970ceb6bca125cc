// What the file readers and writers of io/ share (internal to the engine): errors naming the file,
// a folder sync, and a bounded reader over a file or over bytes in memory.
#pragma once

#include <c10/util/ArrayRef.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include "pathline/errors.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the files of io/ write tensor memory as little-endian .npy and safetensors data; a "
              "big-endian host needs byte swapping");

namespace pathline::io_detail {

namespace fs = std::filesystem;

// ------------------------------------------------------------------------------------------------
// Files

[[noreturn]] inline void fail(const fs::path& file, const std::string& reason) {
  throw InputError(file.string() + ": " + reason);
}

inline std::string errno_text(int err) { return std::strerror(err); }

// Flushes a folder's entry table to disk, so that a rename inside it survives a power cut (rename
// alone is atomic for readers but not durable). Filesystems that cannot sync a folder say EINVAL.
inline int sync_folder(const fs::path& folder) {
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

// A name or other text from a file, quoted for a one-line message: control bytes escaped, very long
// text shortened.
inline std::string shown(std::string_view text) {
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

inline std::string shape_text(c10::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace pathline::io_detail
