// Plugin "autoencoders": the built-in autoencoders, `identity` (identity.cpp: the flow runs on the
// data) and `conv_vae` (conv_vae.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "pathline/plugin.hpp"

namespace pathline::autoencoders {

void register_identity(Registrar& registrar);
void register_conv_vae(Registrar& registrar);

}  // namespace pathline::autoencoders
