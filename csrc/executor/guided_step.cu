// The guided-step executor: conditional JVP || unconditional forward on two streams, and CUDA-graph
// capture of a whole step. Host code only (the model's kernels and the fused ops do the work); it is a
// .cu file so that it is compiled by nvcc with the rest of the CUDA part and checked in CPU CI.
#include "covkernels/cuda_executor.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

namespace covkernels {
namespace cuda {

namespace {

// `waiter` does not run ahead of the work queued on `producer` so far. A plain runtime event (no timing):
// ATen's CUDAEvent header pulls in the cuBLAS/cuSPARSE headers, which the compile-only CI lacks.
void wait_for(const c10::cuda::CUDAStream& producer, const c10::cuda::CUDAStream& waiter) {
  cudaEvent_t event;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(event, producer.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(waiter.stream(), event, 0));
  C10_CUDA_CHECK(cudaEventDestroy(event));  // released once the wait is resolved, as CUDA specifies
}

void record_on(const TensorList& tensors, const c10::cuda::CUDAStream& stream) {
  for (const auto& t : tensors)
    if (t.defined() && t.is_cuda()) t.record_stream(stream);
}

}  // namespace

namespace {

// Joins the side stream into the main one and records the crossing tensors when it goes out of scope,
// also when main_fn throws after side_fn queued work (the allocator must not hand out inputs that the
// side stream may still read).
struct StreamJoin {
  const c10::cuda::CUDAStream& main;
  const c10::cuda::CUDAStream& side;
  const TensorList& side_inputs;
  const TensorList& side_out;
  ~StreamJoin() {
    try {
      wait_for(side, main);
      // Memory allocated on `main` and read on `side` must not be reused by `main` before `side` is
      // done with it, and vice versa for the side outputs now handed to `main`.
      record_on(side_inputs, side);
      record_on(side_out, main);
    } catch (...) {  // a destructor must not throw; the CUDA error resurfaces on the next call
    }
  }
};

}  // namespace

std::pair<TensorList, TensorList> run_concurrently(const Thunk& main_fn, const Thunk& side_fn,
                                                   const TensorList& side_inputs, int64_t device) {
  const c10::cuda::CUDAGuard device_guard(static_cast<c10::DeviceIndex>(device));
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device));
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, main.device_index());
  wait_for(main, side);
  TensorList side_out, main_out;
  {
    const StreamJoin join{main, side, side_inputs, side_out};
    {
      const c10::cuda::CUDAStreamGuard guard(side);
      side_out = side_fn();
    }
    main_out = main_fn();
  }
  return {std::move(main_out), std::move(side_out)};
}

GraphedCall::GraphedCall(const Thunk& fn, int64_t warmup, int64_t device) : device_(device) {
  TORCH_CHECK(warmup >= 0, "warmup must be >= 0, got ", warmup);
  const c10::cuda::CUDAGuard device_guard(static_cast<c10::DeviceIndex>(device));
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device));
  // Capture needs a stream other than the legacy default one.
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, main.device_index());
  wait_for(main, side);
  {
    const c10::cuda::CUDAStreamGuard guard(side);
    for (int64_t i = 0; i < warmup; ++i) fn();
    graph_ = std::make_unique<at::cuda::CUDAGraph>();
    graph_->capture_begin();
    try {
      outputs_ = fn();
    } catch (...) {
      try {  // end the capture so the stream stays usable; rethrow fn's error, which names the cause
        graph_->capture_end();
      } catch (...) {
      }
      graph_.reset();
      throw;
    }
    graph_->capture_end();
  }
  wait_for(side, main);
}

TensorList GraphedCall::replay() {
  const c10::cuda::CUDAGuard device_guard(static_cast<c10::DeviceIndex>(device_));
  graph_->replay();
  return outputs_;
}

}  // namespace cuda
}  // namespace covkernels
