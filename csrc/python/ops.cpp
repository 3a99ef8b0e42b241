// covkernels._C: the CPU kernels as operators of the `covkernels_cpu` library (torch.ops.covkernels_cpu.*),
// registered through the LibTorch stable ABI, and a bare Python module built on Python's limited API. The
// shared library therefore references only the stable C shim of libtorch (aoti_torch_* / torch_*), so one
// abi3 wheel runs with every torch >= 2.10 and every CPython >= 3.10. The Python wrappers in
// covkernels/ops/<op>/cpp.py allocate (and NaN-poison) the outputs these operators write.
#include <Python.h>

#include <torch/csrc/stable/library.h>
#include <torch/headeronly/version.h>

#include <string>
#include <tuple>

#include "covkernels/cpu_ops.h"

using namespace covkernels;

namespace {

// The run seed is a 64-bit key; the schema's `int` is signed, so it travels as the same 64 bits.
Counters counters(int64_t seed, int64_t sample_offset, int64_t step) {
  return {static_cast<uint64_t>(seed), sample_offset, step};
}

std::string build_info() {
#ifdef _OPENMP
  const std::string openmp = "1";
#else
  const std::string openmp = "0";
#endif
  // torch: the torch whose headers built this library; the ABI it needs is that of TORCH_TARGET_VERSION.
  return "openmp=" + openmp + ";torch=" + TORCH_VERSION + ";abi=stable;min_torch=2.10";
}

void philox_normal(Tensor out, int64_t seed, int64_t sample_offset, int64_t step, int64_t stream) {
  philox_normal_out(out, counters(seed, sample_offset, step), stream);
}

void block_dct2(Tensor x, Tensor out, int64_t block, bool inverse) { block_dct2_out(x, out, block, inverse); }

void probe_tangent(Tensor out, int64_t seed, int64_t sample_offset, int64_t step, int64_t stream, int64_t block) {
  probe_tangent_out(out, counters(seed, sample_offset, step), stream, block);
}

void structured_step(Tensor denoised, Tensor x_t, Tensor jvps, Tensor out, int64_t seed, int64_t sample_offset,
                     int64_t step, double ratio, double var0, double scale2, std::optional<double> c_max,
                     int64_t block, bool channel_average, int64_t noise_stream, int64_t probe_stream,
                     bool noise_only) {
  const StepParams p{ratio, var0, scale2, c_max, block, channel_average, noise_stream, probe_stream, noise_only};
  structured_step_out(denoised, x_t, jvps, out, counters(seed, sample_offset, step), p);
}

std::tuple<Tensor, Tensor> lanczos_update_op(Tensor aq, Tensor basis, int64_t j, bool reorthogonalize, double tol,
                                             double tiny) {
  return lanczos_update(aq, basis, j, reorthogonalize, tol, tiny);
}

void lanczos_synthesis(Tensor denoised, Tensor x_t, Tensor basis, Tensor coef, Tensor out, double ratio) {
  lanczos_synthesis_out(denoised, x_t, basis, coef, out, ratio);
}

}  // namespace

STABLE_TORCH_LIBRARY(covkernels_cpu, m) {
  m.def("build_info() -> str");
  m.def("philox_normal(Tensor(a!) out, int seed, int sample_offset, int step, int stream) -> ()");
  m.def("block_dct2(Tensor x, Tensor(a!) out, int block, bool inverse) -> ()");
  m.def("probe_tangent(Tensor(a!) out, int seed, int sample_offset, int step, int stream, int block) -> ()");
  m.def("structured_step(Tensor denoised, Tensor x_t, Tensor jvps, Tensor(a!) out, int seed, int sample_offset, "
        "int step, float ratio, float var0, float scale2, float? c_max, int block, bool channel_average, "
        "int noise_stream, int probe_stream, bool noise_only) -> ()");
  m.def("lanczos_update(Tensor aq, Tensor(a!) basis, int j, bool reorthogonalize, float tol, float tiny) "
        "-> (Tensor, Tensor)");
  m.def("lanczos_synthesis(Tensor denoised, Tensor x_t, Tensor basis, Tensor coef, Tensor(a!) out, float ratio) "
        "-> ()");
}

// build_info has no tensor argument: CompositeExplicitAutograd makes it callable without a dispatch key.
STABLE_TORCH_LIBRARY_IMPL(covkernels_cpu, CompositeExplicitAutograd, m) {
  m.impl("build_info", TORCH_BOX(&build_info));
}

STABLE_TORCH_LIBRARY_IMPL(covkernels_cpu, CPU, m) {
  m.impl("philox_normal", TORCH_BOX(&philox_normal));
  m.impl("block_dct2", TORCH_BOX(&block_dct2));
  m.impl("probe_tangent", TORCH_BOX(&probe_tangent));
  m.impl("structured_step", TORCH_BOX(&structured_step));
  m.impl("lanczos_update", TORCH_BOX(&lanczos_update_op));
  m.impl("lanczos_synthesis", TORCH_BOX(&lanczos_synthesis));
}

// Importing covkernels._C loads this library, whose static initialisers above register the operators; the
// module itself is empty (no pybind11, nothing of the CPython ABI beyond the limited API).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "covkernels CPU kernels: operators torch.ops.covkernels_cpu.* (stable ABI)", -1,
                               nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
