// Counter-based random numbers: Philox4x32-10 and the uint32 -> float transforms of
// covkernels/ops/rng/reference.py. Header-only and host/device, so the CPU kernels, CUDA code and the C++
// tests draw the same values as the PyTorch reference and the Triton kernels (integer words bit-exact,
// floats equal up to the rounding of log/cos).
//
// Counter of one value: (element index within the sample, global sample index, step index, stream id);
// key: the 64-bit run seed.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CK_HD __host__ __device__ __forceinline__
#else
#define CK_HD inline
#endif

namespace covkernels {

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

CK_HD PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t pa = static_cast<uint64_t>(c0) * 0xD2511F53u;
    const uint64_t pb = static_cast<uint64_t>(c2) * 0xCD9E8D57u;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;  // Weyl key schedule (golden ratio, sqrt(3) - 1)
    k1 += 0xBB67AE85u;
  }
  return {c0, c1, c2, c3};
}

// uint32 -> float in [0, 1) exactly as Triton's uint_to_uniform_float: reinterpret as int32, fold the
// negatives (~s == -s - 1 without the overflow at INT32_MIN), scale by ~2^-31.
CK_HD float uint_to_uniform(uint32_t u) {
  int32_t s = static_cast<int32_t>(u);
  s = s < 0 ? ~s : s;
  return static_cast<float>(s) * 4.6566127342e-10f;
}

// Standard normal (float32) at a counter: Box-Muller on words 0 and 1.
CK_HD float philox_normal_at(uint64_t seed, uint32_t elem, uint32_t sample, uint32_t step, uint32_t stream) {
  const PhiloxWords w = philox4x32_10(elem, sample, step, stream, seed);
  const float u1 = fmaxf(uint_to_uniform(w.w0), 1.0e-7f);
  const float u2 = uint_to_uniform(w.w1);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

// Rademacher +-1 (float32) at a counter: the sign is the top bit of word 0.
CK_HD float philox_rademacher_at(uint64_t seed, uint32_t elem, uint32_t sample, uint32_t step, uint32_t stream) {
  const PhiloxWords w = philox4x32_10(elem, sample, step, stream, seed);
  return 1.0f - 2.0f * static_cast<float>(w.w0 >> 31);
}

}  // namespace covkernels
