// CPU blockwise orthonormal DCT-II (covkernels/ops/dct/reference.py::block_dct2 / block_idct2): per work
// item a strip of K rows x tile columns of one plane is loaded into float (double for float64) buffers,
// transformed in registers/L1 and stored in place of the blocks.
#include "covkernels/cpu_common.h"
#include "covkernels/cpu_ops.h"

namespace covkernels {

void block_dct2_out(const Tensor& x, Tensor& out, int64_t block, bool inverse) {
  check_cpu_contiguous(x, "x");
  check_same(out, x, "out");
  STD_TORCH_CHECK(x.dim() >= 2, "x must have at least 2 dims (..., H, W)");
  const int64_t h = x.size(-2), w = x.size(-1);
  check_block_tiles(block, h, w);
  if (x.numel() == 0) return;
  const int64_t planes = x.numel() / (h * w);
  const Tiling tiling(block, h, w);
  CK_DISPATCH_FLOATING(x.scalar_type(), "block_dct2", [&] {
    using acc_t = opmath_t<scalar_t>;
    const std::vector<acc_t> m = dct_matrix<acc_t>(block, inverse);
    const scalar_t* src = ptr<scalar_t>(x);
    scalar_t* dst = ptr<scalar_t>(out);
    parallel_for(0, planes * tiling.items_per_plane, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(2 * block * tiling.tile);
      acc_t *a = buf.data(), *tmp = a + block * tiling.tile;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t plane = item / tiling.items_per_plane, local = item % tiling.items_per_plane;
        const int64_t tw = tiling.width(local);
        const int64_t base = plane * h * w + tiling.row0(local) * w + tiling.col0(local);
        for (int64_t i = 0; i < block; ++i)
          for (int64_t c = 0; c < tw; ++c) a[i * tw + c] = static_cast<acc_t>(src[base + i * w + c]);
        transform_strip(a, a, tmp, m.data(), block, tw);
        for (int64_t i = 0; i < block; ++i)
          for (int64_t c = 0; c < tw; ++c) dst[base + i * w + c] = static_cast<scalar_t>(a[i * tw + c]);
      }
    });
  });
}

}  // namespace covkernels
