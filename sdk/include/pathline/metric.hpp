// Kind `metric`: a number comparing generated samples with fresh samples of the data.
#pragma once

#include "pathline/component.hpp"

namespace pathline {

class PATHLINE_API Metric {
 public:
  virtual ~Metric() = default;
  // generated and reference: [N, *data_shape] on the CPU. Lower is better unless stated.
  virtual double compute(const torch::Tensor& generated, const torch::Tensor& reference) = 0;
};

}  // namespace pathline
