// The CUDA part of covkernels._C: the guided-step executor and CUDA-graph capture of a whole step.
// Built only when nvcc and a CUDA build of torch are present (COVKERNELS_WITH_CUDA); compiled (not run)
// in CPU CI. The callables are Python functions bound through pybind11 (the GIL is held while they run).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>

#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace covkernels {
namespace cuda {

using TensorList = std::vector<at::Tensor>;
using Thunk = std::function<TensorList()>;

// (main_fn(), side_fn()) on CUDA device `device`: side_fn (the unconditional forward) runs on a pool
// stream of that device, concurrently with main_fn (the conditional JVP) on the current stream. The side stream waits
// for the current one first (it reads inputs produced there), the current stream waits for the side
// stream at the end (an event each way), and the caching allocator is told about every tensor crossing
// streams: side_inputs are recorded on the side stream, side outputs on the current one (also when
// main_fn throws).
std::pair<TensorList, TensorList> run_concurrently(const Thunk& main_fn, const Thunk& side_fn,
                                                   const TensorList& side_inputs, int64_t device);

// fn() captured once in a CUDA graph (after `warmup` eager calls on a side stream, which do the lazy
// initialisation - cuBLAS handles, Triton compilation, allocator growth - that must not happen inside a
// capture) and replayed on the current stream of `device`. Inputs are whatever device memory fn reads
// (static buffers the caller refills); replay() returns fn's output tensors, overwritten by every
// replay. Capture does not execute: outputs() holds meaningful values only after a replay().
class GraphedCall {
 public:
  GraphedCall(const Thunk& fn, int64_t warmup, int64_t device);
  TensorList replay();
  const TensorList& outputs() const { return outputs_; }

 private:
  int64_t device_;
  std::unique_ptr<at::cuda::CUDAGraph> graph_;
  TensorList outputs_;
};

}  // namespace cuda
}  // namespace covkernels
