"""The CUDA part of the extension (``covkernels._C_cuda``) from Python: the guided-step executor and graph-captured steps.

* :func:`run_concurrently` - ``(main_fn(), side_fn())`` with ``side_fn`` (the unconditional forward of a
  guided step) on a side stream, overlapping ``main_fn`` (the conditional JVP): events both ways and
  ``record_stream`` on every tensor that crosses streams. The compiled executor runs it when the
  extension was built with CUDA; otherwise the same protocol runs in Python (torch.cuda streams). On a
  CPU, or with ``enabled=False``, the two calls simply run one after the other.
* :class:`CapturedStep` - a callable (e.g. a whole ``cov_ddim`` step, model calls included, built by
  :func:`covkernels.capture.capture_cov_ddim_step`) captured once in a CUDA graph and replayed on new
  inputs. The model must be capturable (no host syncs, no data-dependent shapes); scalars of the step (sigma, step index, run seed) are baked in at capture,
  so a captured step replays *that* step on whatever ``x`` is copied into its input buffer.

Nothing here touches a GPU at import time.
"""
from __future__ import annotations

import torch

from ._extension import cuda_extension


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _as_list(out) -> list:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _like(out: list, template):
    return out[0] if isinstance(template, torch.Tensor) else type(template)(out)


_side_streams: dict = {}


def _python_concurrently(device, main_fn, side_fn, side_inputs):
    main = torch.cuda.current_stream(device)
    side = _side_streams.get(device.index)
    if side is None:
        side = _side_streams[device.index] = torch.cuda.Stream(device)
    side.wait_stream(main)  # the side stream reads inputs produced on the main stream
    with torch.cuda.stream(side):
        side_out = side_fn()
    main_out = main_fn()
    main.wait_stream(side)
    for t in _tensors(side_inputs):  # allocated on main, read on side
        if t.is_cuda:
            t.record_stream(side)
    for t in _tensors(side_out):  # allocated on side, read on main from now on
        t.record_stream(main)
    return main_out, side_out


def run_concurrently(device: torch.device, main_fn, side_fn, side_inputs, enabled: bool = True):
    """``(main_fn(), side_fn())``; on CUDA ``side_fn`` runs on a side stream overlapping ``main_fn``.

    ``main_fn`` / ``side_fn`` return a tensor or a tuple/list of tensors; ``side_inputs``: the tensors
    (any nesting) that ``side_fn`` reads.
    """
    if device.type != "cuda" or not enabled:
        return main_fn(), side_fn()
    ext = cuda_extension()
    if ext is None:
        return _python_concurrently(device, main_fn, side_fn, side_inputs)
    returned = {}  # what each callable returned, so the lists come back in the same form

    def main():
        returned["main"] = out = main_fn()
        return _as_list(out)

    def side():
        returned["side"] = out = side_fn()
        return _as_list(out)

    main_out, side_out = ext.run_concurrently(main, side, [t for t in _tensors(side_inputs) if t.is_cuda],
                                              _device_index(device))
    return _like(main_out, returned["main"]), _like(side_out, returned["side"])


class CapturedStep:
    """``fn(*inputs)`` captured in a CUDA graph; calling it copies new inputs into the static input
    buffers, replays, and returns the outputs (static buffers too: clone what must survive the next call).

    ``example_inputs``: CUDA tensors with the shapes/dtypes of later inputs. ``warmup`` eager calls on a
    side stream come first (Triton compilation, cuBLAS handles, allocator growth cannot be captured).
    Needs the compiled CUDA executor ``covkernels._C_cuda``.
    """

    def __init__(self, fn, *example_inputs: torch.Tensor, warmup: int = 2):
        ext = cuda_extension()
        if ext is None:
            raise RuntimeError("CUDA-graph capture needs the compiled CUDA executor covkernels._C_cuda (built with "
                               "a CUDA build of torch and nvcc); `covkernels info` says what was built")
        if not example_inputs or not all(isinstance(t, torch.Tensor) and t.is_cuda for t in example_inputs):
            raise ValueError("example_inputs must be one or more CUDA tensors")
        self.inputs = [t.clone() for t in example_inputs]
        self._graph = ext.GraphedCall(lambda: _as_list(fn(*self.inputs)), int(warmup),
                                      _device_index(example_inputs[0].device))

    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} inputs, got {len(inputs)}")
        for buf, new in zip(self.inputs, inputs):
            if new.shape != buf.shape or new.dtype != buf.dtype or new.device != buf.device:
                raise ValueError(f"inputs must match the captured ones: {tuple(buf.shape)} {buf.dtype} on "
                                 f"{buf.device}, got {tuple(new.shape)} {new.dtype} on {new.device}")
            buf.copy_(new)
        return tuple(self._graph.replay())
