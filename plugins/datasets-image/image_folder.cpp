// `image_folder`: PNG and JPEG pictures from a folder, one subfolder per class (classes in sorted
// order, as torchvision's ImageFolder names them) or a flat folder of unlabelled pictures. Every
// picture is decoded once with stb_image, resized and centre-cropped to size x size, and kept in
// memory as bytes.
//
// Pictures go through the engine's one decoder, pathline/picture.hpp (stb_image from Debian's
// libstb.so, which the engine links too: one copy of it in the process).

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "epoch_images.hpp"
#include "pathline/picture.hpp"

namespace pathline_plugins::image_data {

namespace {

namespace fs = std::filesystem;
using pathline::BuildContext;
using pathline::Params;
using pathline::ParamSpec;

[[noreturn]] void fail(const std::string& what) { throw pathline::InputError("image_folder: " + what); }
[[noreturn]] void fail(const fs::path& file, const std::string& what) {
  throw pathline::InputError("image_folder: " + file.string() + ": " + what);
}

bool is_picture(const fs::path& file) {
  std::string ext = file.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

bool is_hidden(const fs::path& entry) { return entry.filename().string().rfind('.', 0) == 0; }

// The pictures directly inside `folder`, sorted by name so that the order (and with it every epoch
// drawn from a seed) does not depend on the file system. Other files are ignored.
std::vector<fs::path> pictures_in(const fs::path& folder) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec))
    if (!is_hidden(it->path()) && it->is_regular_file(ec) && is_picture(it->path()))
      files.push_back(it->path());
  if (ec) fail(folder, "cannot list the folder: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<fs::path> subfolders_of(const fs::path& folder) {
  std::vector<fs::path> folders;
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec))
    if (!is_hidden(it->path()) && it->is_directory(ec)) folders.push_back(it->path());
  if (ec) fail(folder, "cannot list the folder: " + ec.message());
  std::sort(folders.begin(), folders.end());
  return folders;
}

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file, std::string("cannot open: ") + std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(file, "read error");
  return bytes;
}

// Decodes one picture as uint8 [channels, height, width], with the engine's own decoder
// (pathline/picture.hpp: whole PNG and JPEG files only). stb converts between grey and colour itself:
// grey from RGB is its luminance with the ITU-R BT.601 weights, RGB from grey repeats it; an alpha
// channel is dropped.
torch::Tensor decode(const fs::path& file, int channels) {
  pathline::Picture picture;
  try {
    picture = pathline::decode_picture(read_bytes(file), file.string(), channels);
  } catch (const pathline::InputError& e) {
    throw pathline::InputError(std::string("image_folder: ") + e.what());
  }
  return torch::from_blob(picture.pixels.data(), {picture.height, picture.width, picture.channels},
                          torch::kUInt8)
      .permute({2, 0, 1})
      .clone();
}

// Resizes so that the shorter side is `size` (bilinear, with antialiasing when shrinking, so that
// fine patterns do not alias), then keeps the centred size x size square.
torch::Tensor fit(const torch::Tensor& picture, std::int64_t size) {
  const std::int64_t h = picture.size(1), w = picture.size(2);
  if (h == size && w == size) return picture;
  const double scale = static_cast<double>(size) / static_cast<double>(std::min(h, w));
  const std::int64_t new_h =
      h <= w ? size : std::max<std::int64_t>(size, std::llround(static_cast<double>(h) * scale));
  const std::int64_t new_w =
      w < h ? size : std::max<std::int64_t>(size, std::llround(static_cast<double>(w) * scale));
  namespace F = torch::nn::functional;
  const torch::Tensor resized = F::interpolate(picture.unsqueeze(0).to(torch::kFloat32),
                                               F::InterpolateFuncOptions()
                                                   .size(std::vector<std::int64_t>{new_h, new_w})
                                                   .mode(torch::kBilinear)
                                                   .align_corners(false)
                                                   .antialias(true))
                                    .squeeze(0);
  return resized.narrow(1, (new_h - size) / 2, size)
      .narrow(2, (new_w - size) / 2, size)
      .round()
      .clamp(0, 255)
      .to(torch::kUInt8);
}

struct Folder {
  torch::Tensor images;  // uint8 [N, C, size, size]
  torch::Tensor labels;  // int64 [N], undefined when flat
  std::vector<std::string> classes;
};

Folder load(const fs::path& root, std::int64_t size, int channels) {
  std::error_code ec;
  if (root.empty()) fail("root is empty; set it to a folder of class folders of PNG or JPEG pictures");
  if (!fs::exists(root, ec)) fail(root, "no such folder");
  if (!fs::is_directory(root, ec)) fail(root, "not a folder");

  Folder folder;
  std::vector<fs::path> files;
  std::vector<std::int64_t> labels;
  const std::vector<fs::path> classes = subfolders_of(root);
  const std::vector<fs::path> loose = pictures_in(root);
  if (classes.empty()) {
    // A flat folder: one unlabelled set of pictures.
    if (loose.empty())
      fail(root, "no PNG or JPEG pictures in it (.png, .jpg, .jpeg), nor class folders with some");
    files = loose;
  } else {
    // Pictures next to class folders would belong to no class; better said than silently skipped.
    if (!loose.empty())
      fail(root, "holds both class folders and pictures (" + loose.front().filename().string() +
                     "); put every picture in its class's folder, or use a flat folder without subfolders");
    for (std::size_t k = 0; k < classes.size(); ++k) {
      const std::vector<fs::path> in_class = pictures_in(classes[k]);
      if (in_class.empty()) fail(classes[k], "class folder without PNG or JPEG pictures (.png, .jpg, .jpeg)");
      folder.classes.push_back(classes[k].filename().string());
      files.insert(files.end(), in_class.begin(), in_class.end());
      labels.insert(labels.end(), in_class.size(), static_cast<std::int64_t>(k));
    }
  }

  folder.images =
      torch::empty({static_cast<std::int64_t>(files.size()), channels, size, size}, torch::kUInt8);
  for (std::size_t i = 0; i < files.size(); ++i)
    folder.images[static_cast<std::int64_t>(i)].copy_(fit(decode(files[i], channels), size));
  if (!folder.classes.empty()) folder.labels = torch::tensor(labels, torch::kInt64);
  return folder;
}

class ImageFolder : public EpochImages {
 public:
  ImageFolder(const Params& p, const BuildContext&) : ImageFolder(read(p), p.boolean("flip")) {}

 private:
  ImageFolder(std::pair<Folder, pathline::DataInfo> loaded, bool flip)
      : EpochImages("image_folder", std::move(loaded.first.images), std::move(loaded.first.labels),
                    std::move(loaded.second), flip) {}

  static std::pair<Folder, pathline::DataInfo> read(const Params& p) {
    const std::int64_t size = p.integer("size"), channels = p.integer("channels");
    if (channels != 1 && channels != 3)
      fail("channels = " + std::to_string(channels) + ": use 1 (grey) or 3 (RGB)");
    Folder folder = load(p.string("root"), size, static_cast<int>(channels));
    pathline::DataInfo info;
    info.shape = {channels, size, size};
    info.num_classes = static_cast<std::int64_t>(folder.classes.size());
    info.class_names = folder.classes;
    return {std::move(folder), std::move(info)};
  }
};

}  // namespace

void register_image_folder(pathline::Registrar& registrar) {
  registrar.add_type<pathline::Dataset, ImageFolder>(pathline::ComponentDecl{
      "image_folder",
      "PNG and JPEG pictures from root/<class>/ (classes in sorted order) or a flat folder (unlabelled), "
      "resized and centre-cropped to size x size, in [-1, 1]",
      {ParamSpec::string("root", "", "the folder: one subfolder of pictures per class, or pictures only")
           .required(),
       ParamSpec::integer("size", 32,
                          "side of the square images: the shorter side is resized to it, then "
                          "the centre cropped")
           .range(1, 4096),
       ParamSpec::integer("channels", 3, "1 (grey) or 3 (RGB); pictures are converted as needed").range(1, 3),
       ParamSpec::boolean("flip", false, "mirror each drawn image left-right with probability 1/2")}});
}

}  // namespace pathline_plugins::image_data
