// Kind `dataset`: a distribution one can draw batches (and their labels) from. It fills the
// [dataset] slot (the target q(x1)) and the [source] slot (p(x0), when it is not the standard
// Gaussian).
#pragma once

#include "pathline/component.hpp"

namespace pathline {

class PATHLINE_API Dataset {
 public:
  virtual ~Dataset() = default;
  // Shape of one sample, number of classes, value range.
  virtual DataInfo info() const = 0;
  // Draws n samples, x: [n, *info().shape] float32 on the CPU, labels: [n] int64 (undefined when
  // unlabelled), using only `gen` and the data set's own state.
  virtual Batch sample(std::int64_t n, at::Generator& gen) = 0;

  // State beyond `gen` that decides the next batches (an epoch's order and the position in it),
  // for checkpoints: state() after k batches, given to set_state() of a fresh instance, must make
  // it draw what the first would have drawn next. Stateless data sets keep the defaults.
  using State = std::map<std::string, torch::Tensor>;
  virtual State state() const { return {}; }
  virtual void set_state(const State& state) { (void)state; }

  // The log-density of each sample of x ([n, *shape], float64 or float32) under this distribution,
  // [n] float64; an undefined tensor when it has none (a data set of images). A source with a
  // density makes the likelihood (metric `nll`) exact for it; the standard Gaussian has one.
  virtual torch::Tensor log_prob(const torch::Tensor& x) const {
    (void)x;
    return {};
  }
};

}  // namespace pathline
