// Kind `dataset`: the target distribution q(x1), as something one can draw batches from.
#pragma once

#include "pathline/component.hpp"

namespace pathline {

class PATHLINE_API Dataset {
 public:
  virtual ~Dataset() = default;
  // Shape of one sample, without the batch dimension.
  virtual std::vector<std::int64_t> sample_shape() const = 0;
  // Draws n samples, shape [n, *sample_shape()], float32 on the CPU, using only `gen`.
  virtual torch::Tensor sample(std::int64_t n, at::Generator& gen) = 0;
};

}  // namespace pathline
