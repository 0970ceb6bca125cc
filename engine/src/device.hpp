// Moving data to the run's device, and the device's own random generator.
#pragma once

#include <ATen/Context.h>
#include <torch/torch.h>

#include <optional>

namespace pathline {

// A CPU tensor on `device`. To a GPU the copy goes through pinned (page-locked) memory and does not
// wait: the data sets draw batches in pageable memory, from which CUDA would copy synchronously,
// stalling the CPU until the GPU has caught up. The pinned block is held until the copy is done.
inline torch::Tensor to_device(const torch::Tensor& x, const torch::Device& device) {
  if (!x.defined() || device.is_cpu() || !x.is_cpu()) return x.defined() ? x.to(device) : x;
  return x.pin_memory().to(device, /*non_blocking=*/true);
}

// The default generator of a GPU (what dropout and other random operations on its tensors draw
// from), for checkpoints; none for the CPU, whose generator the trainer saves anyway.
inline std::optional<at::Generator> device_generator(const torch::Device& device) {
  if (!device.is_cuda()) return std::nullopt;
  return at::globalContext().defaultGenerator(device);
}

}  // namespace pathline
