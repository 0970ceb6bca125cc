// The inner loops of the fused optimizer (train.cpp's FusedAdam), on raw float32 arrays. Compiled
// on their own with -fno-math-errno (so that the square root vectorises) and in AVX-512, AVX2 and
// baseline versions that the loader picks from for the processor it runs on.
#pragma once

#include <cstdint>

namespace pathline::kernels {

// One Adam / AdamW update of n elements, and the EMA beside them:
//   g' = grad_scale g + l2 p                       (l2: Adam's weight decay; 0 for AdamW)
//   m = beta1 m + (1 - beta1) g';  v = beta2 v + (1 - beta2) g'^2
//   p = decay p - step_size m / (sqrt(v) inv_sqrt_bc2 + eps)      (decay: 1 - lr wd for AdamW)
//   ema = ema + ema_weight (p - ema)              (when ema is not null)
// LibTorch's Adam and AdamW compute the same, one tensor operation after another.
struct AdamScalars {
  float beta1, beta2, eps, step_size, inv_sqrt_bc2, decay, l2, grad_scale, ema_weight;
};
void adam_update(float* p, const float* g, float* m, float* v, float* ema, std::int64_t n,
                 const AdamScalars& s);

// The sum of x_i^2 in double.
double square_sum(const float* x, std::int64_t n);

}  // namespace pathline::kernels
