// Kind `time_sampler`: the distribution of training times t in [0, 1].
#pragma once

#include "pathline/component.hpp"

namespace pathline {

class PATHLINE_API TimeSampler {
 public:
  virtual ~TimeSampler() = default;
  // Draws n times, shape [n], float32 on the CPU, using only `gen`.
  virtual torch::Tensor sample(std::int64_t n, at::Generator& gen) = 0;
};

}  // namespace pathline
