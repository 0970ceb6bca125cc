// Files: the one atomic write and whole-file reads (io.hpp). NumPy arrays are in npy.cpp, safetensors in
// safetensors.cpp, model weights in weights.cpp, pictures in image.cpp; charts are engine/plot.
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

}  // namespace pathline
