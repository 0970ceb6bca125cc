// Plugin "models-image": neural velocity (or noise, data, score) models for images [C, H, W], the
// convolutional `unet` (unet.cpp) and the transformer `dit` (dit.cpp).
#include "image_model.hpp"

namespace {

void register_image_models(pathline::Registrar& registrar) {
  pathline::models_image::register_unet(registrar);
  pathline::models_image::register_dit(registrar);
}

}  // namespace

PATHLINE_PLUGIN("models-image", "0.1.0", register_image_models)
