#include "fused_kernels.hpp"

#include <cmath>

namespace pathline::kernels {

#if defined(__x86_64__) && defined(__GNUC__)
#define PATHLINE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PATHLINE_CLONES
#endif

PATHLINE_CLONES
void adam_update(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                 float* __restrict ema, std::int64_t n, const AdamScalars& s) {
  const float b1 = s.beta1, b2 = s.beta2, c1 = 1.0f - s.beta1, c2 = 1.0f - s.beta2, eps = s.eps;
  const float step = s.step_size, root = s.inv_sqrt_bc2, decay = s.decay, l2 = s.l2, scale = s.grad_scale;
  const float w = s.ema_weight;
  auto update = [&](std::int64_t i) {
    const float grad = scale * g[i] + l2 * p[i];
    const float mi = b1 * m[i] + c1 * grad;
    const float vi = b2 * v[i] + c2 * grad * grad;
    m[i] = mi;
    v[i] = vi;
    const float pi = decay * p[i] - step * mi / (std::sqrt(vi) * root + eps);
    p[i] = pi;
    return pi;
  };
  if (ema) {
    for (std::int64_t i = 0; i < n; ++i) {
      const float pi = update(i);
      ema[i] += w * (pi - ema[i]);
    }
  } else {
    for (std::int64_t i = 0; i < n; ++i) update(i);
  }
}

PATHLINE_CLONES
double square_sum(const float* __restrict x, std::int64_t n) {
  // Sixteen float lanes (vectorised) over blocks of 1024 elements, the blocks added up in double.
  constexpr std::int64_t kLanes = 16, kBlock = 1024;
  double total = 0.0;
  for (std::int64_t begin = 0; begin < n; begin += kBlock) {
    const std::int64_t end = begin + kBlock < n ? begin + kBlock : n;
    float lanes[kLanes] = {};
    std::int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (std::int64_t k = 0; k < kLanes; ++k) lanes[k] += x[i + k] * x[i + k];
    for (; i < end; ++i) lanes[0] += x[i] * x[i];
    for (float lane : lanes) total += lane;
  }
  return total;
}

}  // namespace pathline::kernels
