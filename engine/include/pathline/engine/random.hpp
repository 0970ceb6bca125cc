// Random streams. Every random draw of a run comes from a generator derived from [run] seed, the
// stream's purpose and the data-parallel rank by hashing, so that adding a stream or a rank never
// makes two of them collide (as `seed * 4 + k` did for seeds 0 and 1).
#pragma once

#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>

namespace pathline {

enum class Stream : std::uint64_t {
  train = 1,   // training batches: data, source, coupling, times, label dropout
  sample = 2,  // the initial noise and stochastic solvers
  eval = 3,    // reference data for metrics
  init = 4,    // parameter initialisation (LibTorch's global generator is seeded from it)
  plot = 5,    // data drawn only for pictures
};

// SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijection that scatters nearby inputs.
inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline std::uint64_t derive_seed(std::uint64_t seed, Stream stream, std::uint64_t rank = 0) {
  return splitmix64(splitmix64(splitmix64(seed) ^ static_cast<std::uint64_t>(stream)) ^ rank);
}

inline at::Generator make_generator(std::uint64_t seed, Stream stream, std::uint64_t rank = 0) {
  return at::make_generator<at::CPUGeneratorImpl>(derive_seed(seed, stream, rank));
}

}  // namespace pathline
