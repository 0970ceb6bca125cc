// Plugin "datasets-image": image data sets held in memory and drawn in epoch order:
// `fashion_mnist` (Debian's idx files, decoded with zlib) and `image_folder` (PNG and JPEG pictures
// in class folders, decoded with stb_image). The components live in their own files.
#include "epoch_images.hpp"

namespace {

void register_image_datasets(pathline::Registrar& registrar) {
  pathline_plugins::image_data::register_fashion_mnist(registrar);
  pathline_plugins::image_data::register_image_folder(registrar);
}

}  // namespace

PATHLINE_PLUGIN("datasets-image", "0.1.0", register_image_datasets)
