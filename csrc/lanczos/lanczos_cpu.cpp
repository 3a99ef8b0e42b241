// CPU Lanczos iteration and synthesis (covkernels/ops/lanczos/reference.py). One iteration is at most
// four passes over a sample's N elements, each parallel over (sample, chunk):
//   1. h_i = <q_i, J q_j> and |J q_j|^2 (breakdown scale)
//   2. w = J q_j - sum_i h_i q_i, written into basis[j + 1]; with reorthogonalisation the second sweep's
//      projections <q_i, w> are accumulated in the same pass, else |w|^2
//   3. (reorthogonalisation) w -= sum_i h2_i q_i and |w|^2
//   4. w *= 1 / beta (0 where the Krylov space is invariant)
// Per-chunk partial sums are reduced in double, in chunk order, so results do not depend on the thread
// count and repeat bit for bit.
#include "covkernels/cpu_common.h"
#include "covkernels/cpu_ops.h"

namespace covkernels {

namespace {

constexpr int64_t kChunk = 4096;

// Runs body(b, begin, end, partial) for every (sample, chunk); partial points at that chunk's `width`
// doubles. Returns the per-sample sums (B x width) reduced in chunk order. With at least as many samples
// as threads a thread takes whole samples (a sample's rows stay in its cache from one pass to the next),
// else the chunks of a sample are shared out.
template <typename Body>
std::vector<double> chunked_sums(int64_t bsz, int64_t n, int64_t width, const Body& body) {
  const int64_t chunks = std::max<int64_t>(1, (n + kChunk - 1) / kChunk);
  std::vector<double> partial(static_cast<size_t>(bsz * chunks * width), 0.0);
  const int64_t grain = bsz >= static_cast<int64_t>(torch::stable::get_num_threads()) ? chunks : 1;
  parallel_for(0, bsz * chunks, grain, [&](int64_t first, int64_t last) {
    for (int64_t item = first; item < last; ++item) {
      const int64_t b = item / chunks, begin = (item % chunks) * kChunk;
      body(b, begin, std::min(n, begin + kChunk), partial.data() + item * width);
    }
  });
  std::vector<double> sums(static_cast<size_t>(bsz * width), 0.0);
  for (int64_t b = 0; b < bsz; ++b)
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t i = 0; i < width; ++i) sums[b * width + i] += partial[(b * chunks + c) * width + i];
  return sums;
}

// Vectorised partial dot product: the simd reduction lets the compiler keep one accumulator per lane
// (a fixed association, so still deterministic); chunk sums are combined in double.
template <typename T>
double dot(const T* a, const T* b, int64_t lo, int64_t hi) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t e = lo; e < hi; ++e) acc += a[e] * b[e];
  return static_cast<double>(acc);
}

template <typename T>
std::tuple<Tensor, Tensor> lanczos_update_impl(const Tensor& aq, Tensor& basis, int64_t j,
                                                       bool reorth, double tol, double tiny) {
  const int64_t k = basis.size(0), bsz = basis.size(1), n = bsz ? basis.numel() / (k * bsz) : 0;
  const int64_t first = reorth ? 0 : std::max<int64_t>(j - 1, 0);
  const int64_t rows = reorth ? j + 1 : std::min<int64_t>(j, 1) + 1;
  T* q = ptr<T>(basis);
  const T* a = ptr<T>(aq);
  const int64_t row_stride = bsz * n;
  auto row = [&](int64_t i, int64_t b) { return q + (first + i) * row_stride + b * n; };
  Tensor scratch;
  T* w;
  if (j + 1 < k) {
    w = q + (j + 1) * row_stride;
  } else {  // last iteration: only beta is wanted
    scratch = torch::stable::new_empty(basis, {bsz, n});
    w = ptr<T>(scratch);
  }

  // pass 1: projections and the scale
  const std::vector<double> h1 = chunked_sums(bsz, n, rows + 1, [&](int64_t b, int64_t lo, int64_t hi, double* s) {
    const T* ab = a + b * n;
    for (int64_t i = 0; i < rows; ++i) s[i] = dot(row(i, b), ab, lo, hi);
    s[rows] = dot(ab, ab, lo, hi);
  });

  // pass 2 (+3): residual, written into w
  auto subtract = [&](const T* src, const std::vector<double>& coef, int64_t cw, bool project) {
    return chunked_sums(bsz, n, rows, [&, src, cw, project](int64_t b, int64_t lo, int64_t hi, double* s) {
      const T* sb = src + b * n;
      T* wb = w + b * n;
      for (int64_t e = lo; e < hi; ++e) wb[e] = sb[e];
      for (int64_t i = 0; i < rows; ++i) {
        const T c = static_cast<T>(coef[b * cw + i]);
        const T* qi = row(i, b);
        for (int64_t e = lo; e < hi; ++e) wb[e] -= c * qi[e];
      }
      if (project) {
        for (int64_t i = 0; i < rows; ++i) s[i] = dot(row(i, b), wb, lo, hi);
      } else {
        s[0] = dot(wb, wb, lo, hi);
      }
    });
  };
  std::vector<double> h(static_cast<size_t>(bsz * rows)), norm2(static_cast<size_t>(bsz));
  for (int64_t b = 0; b < bsz; ++b)
    for (int64_t i = 0; i < rows; ++i) h[b * rows + i] = static_cast<double>(static_cast<T>(h1[b * (rows + 1) + i]));
  const std::vector<double> second = subtract(a, h, rows, reorth);
  if (reorth) {  // "twice is enough": the second classical Gram-Schmidt sweep, in place on w
    std::vector<double> h2(static_cast<size_t>(bsz * rows));
    for (size_t i = 0; i < h2.size(); ++i) h2[i] = static_cast<double>(static_cast<T>(second[i]));
    const std::vector<double> last = subtract(w, h2, rows, false);
    for (int64_t b = 0; b < bsz; ++b) {
      norm2[b] = last[b * rows];
      for (int64_t i = 0; i < rows; ++i) h[b * rows + i] += h2[b * rows + i];
    }
  } else {
    for (int64_t b = 0; b < bsz; ++b) norm2[b] = second[b * rows];
  }

  Tensor h_out = torch::stable::new_zeros(basis, {bsz, j + 1});
  Tensor beta_out = torch::stable::new_empty(basis, {bsz});
  T* ho = ptr<T>(h_out);
  T* bo = ptr<T>(beta_out);
  std::vector<T> inv(static_cast<size_t>(bsz));
  for (int64_t b = 0; b < bsz; ++b) {
    for (int64_t i = 0; i < rows; ++i) ho[b * (j + 1) + first + i] = static_cast<T>(h[b * rows + i]);
    const T beta = static_cast<T>(std::sqrt(norm2[b]));
    const T scale = static_cast<T>(std::sqrt(h1[b * (rows + 1) + rows]));
    const bool alive = beta > static_cast<T>(tol) * scale + static_cast<T>(tiny);
    bo[b] = alive ? beta : T(0);
    inv[b] = alive ? T(1) / beta : T(0);
  }
  if (j + 1 < k) {  // pass 4: normalise q_{j+1}
    chunked_sums(bsz, n, 1, [&](int64_t b, int64_t lo, int64_t hi, double*) {
      T* wb = w + b * n;
      for (int64_t e = lo; e < hi; ++e) wb[e] *= inv[b];
    });
  }
  return {h_out, beta_out};
}

}  // namespace

std::tuple<Tensor, Tensor> lanczos_update(const Tensor& aq, Tensor& basis, int64_t j,
                                                  bool reorthogonalize, double breakdown_tol, double tiny) {
  check_cpu_contiguous(basis, "basis");
  check_cpu_contiguous(aq, "aq");
  STD_TORCH_CHECK(basis.dim() >= 2, "basis must be (k, B, ...)");
  STD_TORCH_CHECK(basis.scalar_type() == ScalarType::Float || basis.scalar_type() == ScalarType::Double,
              "basis must be float32 or float64");
  STD_TORCH_CHECK(aq.scalar_type() == basis.scalar_type(), "aq must have the dtype of basis");
  STD_TORCH_CHECK(same_sizes(basis, aq, 1), "aq must have shape ", shape_str(basis), "[1:]");
  STD_TORCH_CHECK(j >= 0 && j < basis.size(0), "j must be in [0, k), got ", j);
  return CK_DISPATCH_FLOAT_DOUBLE(basis.scalar_type(), "lanczos_update", [&] {
    return lanczos_update_impl<scalar_t>(aq, basis, j, reorthogonalize, breakdown_tol, tiny);
  });
}

void lanczos_synthesis_out(const Tensor& denoised, const Tensor& x_t, const Tensor& basis,
                           const Tensor& coef, Tensor& out, double ratio) {
  check_cpu_contiguous(x_t, "x_t");
  check_same(denoised, x_t, "denoised");
  check_same(out, x_t, "out");
  check_cpu_contiguous(basis, "basis");
  check_cpu_contiguous(coef, "coef");
  STD_TORCH_CHECK(x_t.dim() >= 1 && basis.dim() == x_t.dim() + 1 && same_sizes(basis, x_t, 1),
              "basis must be (k, *x_t.shape)");
  STD_TORCH_CHECK(coef.dim() == 2 && coef.size(0) == x_t.size(0) && coef.size(1) <= basis.size(0),
              "coef must be (B, k') with k' <= k");
  const int64_t bsz = x_t.size(0), n = bsz ? x_t.numel() / bsz : 0, rows = coef.size(1);
  if (x_t.numel() == 0) return;
  CK_DISPATCH_FLOATING(x_t.scalar_type(), "lanczos_synthesis", [&] {
    using acc_t = opmath_t<scalar_t>;
    STD_TORCH_CHECK(basis.scalar_type() == (std::is_same_v<acc_t, double> ? ScalarType::Double : ScalarType::Float) &&
                    coef.scalar_type() == basis.scalar_type(),
                "basis and coef must have the accumulation dtype of x_t");
    const scalar_t *d = ptr<scalar_t>(denoised), *x = ptr<scalar_t>(x_t);
    const acc_t *q = ptr<acc_t>(basis), *cf = ptr<acc_t>(coef);
    scalar_t* o = ptr<scalar_t>(out);
    const auto r = static_cast<acc_t>(ratio);
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    parallel_for(0, bsz * chunks, 1, [&](int64_t first, int64_t last) {
      std::vector<acc_t> acc(kChunk);
      for (int64_t item = first; item < last; ++item) {
        const int64_t b = item / chunks, lo = (item % chunks) * kChunk, len = std::min(n, lo + kChunk) - lo;
        const int64_t base = b * n + lo;
        for (int64_t e = 0; e < len; ++e) {
          const auto dv = static_cast<acc_t>(d[base + e]);
          acc[e] = dv + r * (static_cast<acc_t>(x[base + e]) - dv);
        }
        for (int64_t j = 0; j < rows; ++j) {
          const acc_t c = cf[b * rows + j];
          const acc_t* qj = q + j * bsz * n + base;
          for (int64_t e = 0; e < len; ++e) acc[e] += c * qj[e];
        }
        for (int64_t e = 0; e < len; ++e) o[base + e] = static_cast<scalar_t>(acc[e]);
      }
    });
  });
}

}  // namespace covkernels
