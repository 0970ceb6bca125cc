// Kind `coupling`: how a minibatch of noise x0 is paired with a minibatch of data x1.
#pragma once

#include <utility>

#include "pathline/component.hpp"

namespace pathline {

class PATHLINE_API Coupling {
 public:
  virtual ~Coupling() = default;
  // Returns the pairs to train on, row i of the first paired with row i of the second. An
  // independent coupling returns its inputs; an optimal-transport one permutes them.
  virtual std::pair<torch::Tensor, torch::Tensor> couple(const torch::Tensor& x0,
                                                         const torch::Tensor& x1,
                                                         at::Generator& gen) = 0;
};

}  // namespace pathline
