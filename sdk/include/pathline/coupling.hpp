// Kind `coupling`: how a minibatch of the source (x0) is paired with a minibatch of data (x1).
#pragma once

#include <utility>

#include "pathline/component.hpp"

namespace pathline {

class PATHLINE_API Coupling {
 public:
  virtual ~Coupling() = default;
  // Returns the pairs to train on: row i of the first paired with row i of the second, each row's
  // label moving with it. An independent coupling returns its inputs; an optimal-transport one
  // permutes them (and may use the labels, e.g. to pair only within a class).
  virtual std::pair<Batch, Batch> couple(Batch source, Batch target, at::Generator& gen) = 0;
  // A weights file (.safetensors with the model's parameter names) the model starts training from
  // instead of its initialisation: reflow's student starts as its teacher (ABI 8). "" by default.
  virtual std::string initial_weights() const { return {}; }
};

}  // namespace pathline
