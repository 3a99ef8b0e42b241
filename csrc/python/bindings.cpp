// Python bindings of covkernels._C. The kernels take caller-allocated outputs (the Python wrappers in
// covkernels/ops/<op>/cpp.py allocate and NaN-poison them) and release the GIL while they run.
#include <pybind11/functional.h>
#include <torch/extension.h>

#include "covkernels/cpu_ops.h"
#ifdef COVKERNELS_WITH_CUDA
#include "covkernels/cuda_executor.h"
#endif

namespace py = pybind11;
using namespace covkernels;

namespace {

py::dict build_info() {
  py::dict info;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#ifdef COVKERNELS_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["torch"] = TORCH_VERSION;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "covkernels compiled kernels: CPU fused ops (OpenMP) and the CUDA guided-step executor";
  m.def("build_info", &build_info, "what this build contains: openmp, cuda, torch version");
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("philox_normal", [](at::Tensor out, uint64_t seed, int64_t sample_offset, int64_t step, int64_t stream) {
    philox_normal_out(out, {seed, sample_offset, step}, stream);
  }, nogil);
  m.def("block_dct2", [](const at::Tensor& x, at::Tensor out, int64_t block, bool inverse) {
    block_dct2_out(x, out, block, inverse);
  }, nogil);
  m.def("probe_tangent", [](at::Tensor out, uint64_t seed, int64_t sample_offset, int64_t step, int64_t stream,
                            int64_t block) { probe_tangent_out(out, {seed, sample_offset, step}, stream, block); },
        nogil);
  m.def("structured_step",
        [](const at::Tensor& denoised, const at::Tensor& x_t, const at::Tensor& jvps, at::Tensor out, uint64_t seed,
           int64_t sample_offset, int64_t step, double ratio, double var0, double scale2, std::optional<double> c_max,
           int64_t block, bool channel_average, int64_t noise_stream, int64_t probe_stream, bool noise_only) {
          const StepParams p{ratio, var0, scale2, c_max, block, channel_average, noise_stream, probe_stream, noise_only};
          structured_step_out(denoised, x_t, jvps, out, {seed, sample_offset, step}, p);
        },
        nogil);
  m.def("lanczos_update", [](const at::Tensor& aq, at::Tensor basis, int64_t j, bool reorthogonalize, double tol,
                             double tiny) { return lanczos_update(aq, basis, j, reorthogonalize, tol, tiny); },
        nogil);
  m.def("lanczos_synthesis", [](const at::Tensor& denoised, const at::Tensor& x_t, const at::Tensor& basis,
                                const at::Tensor& coef, at::Tensor out, double ratio) {
    lanczos_synthesis_out(denoised, x_t, basis, coef, out, ratio);
  }, nogil);
#ifdef COVKERNELS_WITH_CUDA
  // The callables run with the GIL held (pybind11 wraps them in std::function).
  m.def("run_concurrently", &cuda::run_concurrently, py::arg("main_fn"), py::arg("side_fn"), py::arg("side_inputs"),
        py::arg("device"),
        "(main_fn(), side_fn()) with side_fn on a side stream: events both ways, record_stream on crossings");
  py::class_<cuda::GraphedCall>(m, "GraphedCall")
      .def(py::init<const cuda::Thunk&, int64_t, int64_t>(), py::arg("fn"), py::arg("warmup"), py::arg("device"))
      .def("replay", &cuda::GraphedCall::replay)
      .def_property_readonly("outputs", &cuda::GraphedCall::outputs);
#endif
}
