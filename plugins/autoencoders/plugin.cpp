// Plugin "autoencoders": `identity` and `conv_vae`.
#include "autoencoders.hpp"

namespace {

void register_autoencoders(pathline::Registrar& registrar) {
  pathline::autoencoders::register_identity(registrar);
  pathline::autoencoders::register_conv_vae(registrar);
}

}  // namespace

PATHLINE_PLUGIN("autoencoders", "0.1.0", register_autoencoders)
