// Kind `model`: the network. It maps (x_t, t) to a tensor shaped like x_t, whose meaning the
// parameterization gives.
#pragma once

#include "pathline/component.hpp"

namespace pathline {

class PATHLINE_API Model : public torch::nn::Module {
 public:
  // x: [B, *data_shape], t: [B] in [0, 1]. Returns [B, *data_shape].
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t) = 0;
  // Models with nothing to learn (an exact field, say) return false; the engine then skips
  // training and checkpoints.
  virtual bool trainable() const { return true; }
};

}  // namespace pathline
