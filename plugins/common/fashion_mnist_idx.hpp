// Fashion-MNIST's idx files (Xiao, Rasul & Vollgraf 2017), as Debian's package dataset-fashion-mnist
// installs them: gzip-compressed idx files of unsigned bytes, decoded with zlib. Shared by the
// `fashion_mnist` data set (plugins/datasets-image) and the Fashion-MNIST classifier metrics
// (plugins/metrics-fmnist); header-only and not part of the SDK, so that no plugin depends on
// another one at run time.
//
// The idx format (http://yann.lecun.com/exdb/mnist/): a big-endian 32-bit magic number 0x000008DD,
// 08 for unsigned bytes and DD the number of dimensions, then DD big-endian 32-bit sizes, then the
// values in row-major order.
#pragma once

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "pathline/errors.hpp"

namespace pathline_plugins::fashion_mnist {

namespace fs = std::filesystem;

// Where Debian's package dataset-fashion-mnist puts the four files.
inline constexpr const char* kDefaultRoot = "/usr/share/datasets/fashion-mnist";
inline constexpr std::int64_t kNumClasses = 10;
inline constexpr std::int64_t kSide = 28;  // every image is kSide x kSide grey pixels
inline constexpr std::int64_t kTrainSize = 60000;
inline constexpr std::int64_t kTestSize = 10000;

// The labels' names, in label order (the data set's README).
inline std::vector<std::string> class_names() {
  return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
}

// Who reads, for messages: the component's name ("fashion_mnist", "fd_fmnist") and the key that
// points it at another folder ("[dataset] root", "the metric's `root`").
struct Reader {
  std::string who;
  std::string root_key;
};

struct SplitFiles {
  fs::path images, labels;
};

// The files of "train" (60,000 images) or "test" (10,000, named t10k).
inline SplitFiles split_files(const fs::path& root, const std::string& split) {
  const std::string prefix = split == "test" ? "t10k" : "train";
  return {root / (prefix + "-images-idx3-ubyte.gz"), root / (prefix + "-labels-idx1-ubyte.gz")};
}

[[noreturn]] inline void fail(const Reader& reader, const fs::path& file, const std::string& problem) {
  throw pathline::InputError(reader.who + ": " + file.string() + ": " + problem);
}

// Checked before anything is read, so that a missing data set says how to get it.
inline void require_file(const Reader& reader, const fs::path& file) {
  std::error_code ec;
  if (fs::is_regular_file(file, ec)) return;
  fail(reader, file,
       "no such file; install Debian's package dataset-fashion-mnist (apt-get install "
       "dataset-fashion-mnist) or set " +
           reader.root_key + " to a folder with the four Fashion-MNIST idx .gz files");
}

// A gzip file read as a stream of its uncompressed bytes. gzread also passes a file that is not
// gzip-compressed through unchanged, so an uncompressed idx file reads as well.
class GzipStream {
 public:
  GzipStream(const Reader& reader, fs::path file) : reader_(reader), file_(std::move(file)) {
    require_file(reader_, file_);
    gz_ = gzopen(file_.c_str(), "rb");
    if (!gz_) fail(reader_, file_, std::string("cannot open: ") + std::strerror(errno));
    gzbuffer(gz_, 1u << 18);
  }
  ~GzipStream() {
    if (gz_) gzclose(gz_);
  }
  GzipStream(const GzipStream&) = delete;
  GzipStream& operator=(const GzipStream&) = delete;

  // Reads up to n bytes into `into`; returns fewer only at the end of the data. A cut-off or corrupt
  // stream throws: zlib reports a cut-off one as Z_BUF_ERROR once its data runs out, after handing
  // out what it could decode.
  std::size_t read(void* into, std::size_t n) {
    auto* out = static_cast<char*>(into);
    std::size_t done = 0;
    while (done < n) {
      const auto want = static_cast<unsigned>(std::min<std::size_t>(n - done, 1u << 30));
      const int got = gzread(gz_, out + done, want);
      if (got < 0 || (got == 0 && error_code() != Z_OK)) fail_stream();
      if (got == 0) break;
      done += static_cast<std::size_t>(got);
    }
    return done;
  }

  // True when no byte is left (and the stream ended cleanly).
  bool at_end() {
    char byte;
    return read(&byte, 1) == 0;
  }

  const fs::path& file() const { return file_; }

 private:
  int error_code() {
    int code = Z_OK;
    gzerror(gz_, &code);
    return code;
  }
  [[noreturn]] void fail_stream() {
    int code = Z_OK;
    const char* message = gzerror(gz_, &code);
    const std::string zlib =
        std::string(" (zlib: ") + (message && *message ? message : "unknown error") + ")";
    if (code == Z_BUF_ERROR) fail(reader_, file_, "truncated gzip stream: the file ends early" + zlib);
    fail(reader_, file_, "corrupt gzip stream" + zlib);
  }

  Reader reader_;
  fs::path file_;
  gzFile gz_ = nullptr;
};

// Reads an idx header of unsigned bytes with `rank` dimensions and checks its magic number.
inline std::vector<std::int64_t> read_idx_header(const Reader& reader, GzipStream& in, int rank) {
  std::vector<unsigned char> header(4 * (1 + static_cast<std::size_t>(rank)));
  const std::size_t got = in.read(header.data(), header.size());
  if (got < header.size())
    fail(
        reader, in.file(),
        "truncated idx header: " + std::to_string(got) + " bytes, expected " + std::to_string(header.size()));
  auto be32 = [&](std::size_t at) {
    return (std::uint32_t{header[at]} << 24) | (std::uint32_t{header[at + 1]} << 16) |
           (std::uint32_t{header[at + 2]} << 8) | std::uint32_t{header[at + 3]};
  };
  const std::uint32_t magic = be32(0), expected = 0x800u | static_cast<std::uint32_t>(rank);
  if (magic != expected) {
    auto hex = [](std::uint32_t v) {
      char text[11];
      std::snprintf(text, sizeof text, "0x%08x", v);
      return std::string(text);
    };
    fail(reader, in.file(),
         "wrong magic number " + hex(magic) + ", expected " + hex(expected) +
             " (an idx file of unsigned bytes with " + std::to_string(rank) + " dimensions)");
  }
  std::vector<std::int64_t> dims;
  for (int d = 0; d < rank; ++d) dims.push_back(be32(4 * (1 + static_cast<std::size_t>(d))));
  return dims;
}

// Reads `count` items of `item_bytes` bytes each into `into`; with `whole`, also checks that nothing
// follows them (a file longer than its header says is not the file it claims to be).
inline void read_idx_data(const Reader& reader, GzipStream& in, void* into, std::int64_t count,
                          std::int64_t item_bytes, std::int64_t header_count, const char* items, bool whole) {
  const auto bytes = static_cast<std::size_t>(count * item_bytes);
  const std::size_t got = in.read(into, bytes);
  if (got < bytes)
    fail(reader, in.file(),
         "short data: the header announces " + std::to_string(header_count) + " " + items + " (" +
             std::to_string(header_count * item_bytes) + " bytes) but the file ends after " +
             std::to_string(got / static_cast<std::size_t>(item_bytes)) + " of them");
  if (whole && !in.at_end())
    fail(reader, in.file(),
         "more data than the header announces (" + std::to_string(header_count) + " " + items + ")");
}

// One split: images uint8 [N, 1, 28, 28] (0 black background ... 255), labels int64 [N] in 0 ... 9.
struct Split {
  torch::Tensor images;
  torch::Tensor labels;
};

// Decodes the first `limit` images and labels of a split (0: all of them). Reading stops after
// those, so that a small limit is quick; only a whole read checks that nothing trails the data.
inline Split read_split(const Reader& reader, const fs::path& root, const std::string& split,
                        std::int64_t limit = 0) {
  const SplitFiles files = split_files(root, split);
  // Both files must be there before the long read starts.
  require_file(reader, files.images);
  require_file(reader, files.labels);

  GzipStream images_in(reader, files.images);
  const std::vector<std::int64_t> dims = read_idx_header(reader, images_in, 3);
  if (dims[1] != kSide || dims[2] != kSide)
    fail(reader, files.images,
         "images of " + std::to_string(dims[1]) + "x" + std::to_string(dims[2]) +
             " pixels; Fashion-MNIST's are 28x28");
  GzipStream labels_in(reader, files.labels);
  const std::int64_t label_count = read_idx_header(reader, labels_in, 1)[0];
  if (label_count != dims[0])
    fail(reader, files.labels,
         "has " + std::to_string(label_count) + " labels but " + files.images.filename().string() + " has " +
             std::to_string(dims[0]) + " images; the two files must belong together");

  const bool whole = limit <= 0 || limit >= dims[0];
  const std::int64_t n = whole ? dims[0] : limit;
  Split out;
  out.images = torch::empty({n, 1, kSide, kSide}, torch::kUInt8);
  read_idx_data(reader, images_in, out.images.data_ptr(), n, kSide * kSide, dims[0], "images", whole);
  torch::Tensor labels = torch::empty({n}, torch::kUInt8);
  read_idx_data(reader, labels_in, labels.data_ptr(), n, 1, label_count, "labels", whole);
  const auto* l = labels.data_ptr<std::uint8_t>();
  for (std::int64_t i = 0; i < n; ++i)
    if (l[i] >= kNumClasses)
      fail(reader, files.labels,
           "label " + std::to_string(l[i]) + " of item " + std::to_string(i) +
               " is outside 0-9; Fashion-MNIST has 10 classes");
  out.labels = labels.to(torch::kInt64);
  return out;
}

// 64-bit FNV-1a (Fowler, Noll & Vo) of a file's bytes, continuing from `hash`: enough to tell data
// files apart for a cache key (it is not meant to resist tampering).
inline std::uint64_t fnv1a_file(const Reader& reader, const fs::path& file,
                                std::uint64_t hash = 14695981039346656037ull) {
  require_file(reader, file);
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(reader, file, std::string("cannot open: ") + std::strerror(errno));
  std::vector<char> buffer(1u << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto got = static_cast<std::size_t>(in.gcount());
    for (std::size_t i = 0; i < got; ++i) {
      hash ^= static_cast<unsigned char>(buffer[i]);
      hash *= 1099511628211ull;
    }
  }
  if (in.bad()) fail(reader, file, "read error");
  return hash;
}

}  // namespace pathline_plugins::fashion_mnist
