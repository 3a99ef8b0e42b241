// covkernels._C_cuda: the CUDA guided-step executor (two streams) and CUDA-graph capture, as a pybind11
// module on the version-bound LibTorch C++ API. It runs Python callables (the model's JVP and forward),
// which the stable ABI's operator interface cannot carry, so it stays a separate, optional module built
// only with a CUDA build of torch and nvcc, and rebuilt for each torch version; the CPU kernels live in the
// stable-ABI covkernels._C.
#include <pybind11/functional.h>
#include <torch/extension.h>

#include "covkernels/cuda_executor.h"

namespace py = pybind11;
using namespace covkernels;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "covkernels CUDA guided-step executor and CUDA-graph capture (version-bound C++ API)";
  m.attr("torch_version") = TORCH_VERSION;
  // The callables run with the GIL held (pybind11 wraps them in std::function).
  m.def("run_concurrently", &cuda::run_concurrently, py::arg("main_fn"), py::arg("side_fn"), py::arg("side_inputs"),
        py::arg("device"),
        "(main_fn(), side_fn()) with side_fn on a side stream: events both ways, record_stream on crossings");
  py::class_<cuda::GraphedCall>(m, "GraphedCall")
      .def(py::init<const cuda::Thunk&, int64_t, int64_t>(), py::arg("fn"), py::arg("warmup"), py::arg("device"))
      .def("replay", &cuda::GraphedCall::replay)
      .def_property_readonly("outputs", &cuda::GraphedCall::outputs);
}
