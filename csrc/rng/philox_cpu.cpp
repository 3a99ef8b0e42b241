// CPU twin of covkernels/ops/rng/reference.py::philox_normal: one counter per element, float32 math,
// cast on store. Parallel over chunks of the flat output; each value depends only on its counter, so
// the result is independent of the thread count.
#include "covkernels/cpu_common.h"
#include "covkernels/cpu_ops.h"
#include "covkernels/philox.h"

namespace covkernels {

void philox_normal_out(Tensor& out, Counters ctr, int64_t stream) {
  check_cpu_contiguous(out, "out");
  STD_TORCH_CHECK(out.dim() >= 1, "out must have a batch dimension");
  const int64_t total = out.numel();
  if (total == 0) return;
  const int64_t per_sample = total / out.size(0);
  CK_DISPATCH_FLOATING(out.scalar_type(), "philox_normal", [&] {
    scalar_t* dst = ptr<scalar_t>(out);
    parallel_for(0, total, 1 << 14, [&](int64_t begin, int64_t end) {
      int64_t b = begin / per_sample, e = begin % per_sample;
      for (int64_t i = begin; i < end; ++i) {
        dst[i] = static_cast<scalar_t>(philox_normal_at(ctr.seed, static_cast<uint32_t>(e),
                                                        static_cast<uint32_t>(ctr.sample_offset + b),
                                                        static_cast<uint32_t>(ctr.step),
                                                        static_cast<uint32_t>(stream)));
        if (++e == per_sample) e = 0, ++b;
      }
    });
  });
}

}  // namespace covkernels
