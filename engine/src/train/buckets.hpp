// Data parallel: the gradients of a step in one flat buffer, cut into buckets whose all-reduce
// starts as soon as the backward pass has produced all of a bucket's gradients (internal to the
// trainer: trainer.cpp and buckets.cpp).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace pathline {

struct GradientBuckets {
  struct Slot {
    std::int64_t offset = 0;
    std::size_t bucket = 0;
    bool written = false, counted = false;
  };
  struct Bucket {
    std::int64_t begin, size;
    int params, pending;
    bool launched;
  };
  torch::Tensor flat;       // the gradients, in buckets (reverse parameter order)
  torch::Tensor scalars;    // the loss and the stop flag
  std::vector<Slot> slots;  // per parameter: where its gradient goes in `flat`
  std::vector<Bucket> buckets;
  bool collecting = false, last_micro = true;
  std::vector<unsigned> hooks;  // attach()'s gradient hooks, removed by the trainer's destructor
};

}  // namespace pathline
