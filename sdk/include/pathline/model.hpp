// Kind `model`: the network. It maps (x_t, t, condition) to a tensor shaped like x_t, whose meaning
// the parameterization gives.
#pragma once

#include "pathline/component.hpp"

namespace pathline {

class PATHLINE_API Model : public torch::nn::Module {
 public:
  // x: [B, *shape], t: [B] in [0, 1], condition.labels: [B] (kNullLabel: unconditional) or
  // undefined. Returns [B, *shape].
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t,
                                const Condition& condition) = 0;
  // Models with nothing to learn (an exact field, say) return false; the engine then skips
  // training and checkpoints.
  virtual bool trainable() const { return true; }
  // Multiply-accumulates of one forward pass for one sample, counted from the architecture (0:
  // unknown). The engine reports parameters, MACs and achieved GFLOP/s from it.
  virtual double macs_per_sample() const { return 0.0; }
  // True when every output row depends only on the same row of x, t and the condition (no batch
  // statistics, no random draws), so that forward on a block of rows gives those rows' outputs.
  // The engine then evaluates large sampling batches on the CPU as blocks of rows, which keeps a
  // small network's activations in cache (ABI 6). The default, false, keeps every call whole.
  virtual bool rows_independent() const { return false; }
  // The condition extras holding times it takes beside t ([B] each), by name: kIntervalEnd
  // (objective.hpp) for a model built for an objective that trains on intervals (ABI 8). None by
  // default.
  virtual std::vector<std::string> times() const { return {}; }
};

}  // namespace pathline
