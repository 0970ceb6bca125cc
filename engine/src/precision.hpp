// Mixed precision: bfloat16 autocast around a model's forward pass ([train] precision, [sample]
// precision). Matrix products and convolutions run in bfloat16 (the processor's AVX-512 BF16 on
// CPU), reductions and norms in float32, as LibTorch's autocast lists decide; the caller casts the
// output back to float32 before the loss or the solver sees it.
#pragma once

#include <ATen/autocast_mode.h>

#include <string>

#include "pathline/engine/config.hpp"

namespace pathline {

// "fp32" | "bf16", as the config's choice parameters spell them.
inline bool wants_bf16(const std::string& precision) { return precision == "bf16"; }

// Turns autocast on for the device for its lifetime (a no-op when `on` is false). Leaving the
// outermost guard clears autocast's cache of cast weights: the optimizer changes the weights between
// two steps, and a stale bfloat16 copy would be used otherwise.
class AutocastGuard {
 public:
  AutocastGuard(bool on, const torch::Device& device) : on_(on), type_(device.type()) {
    if (!on_) return;
    was_enabled_ = at::autocast::is_autocast_enabled(type_);
    was_dtype_ = at::autocast::get_autocast_dtype(type_);
    at::autocast::set_autocast_enabled(type_, true);
    at::autocast::set_autocast_dtype(type_, at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(type_, was_enabled_);
    at::autocast::set_autocast_dtype(type_, was_dtype_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool on_;
  at::DeviceType type_;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

}  // namespace pathline
