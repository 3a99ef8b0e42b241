"""Scale-out of the evaluation under ``torchrun``: every rank draws its own contiguous range of sample indices
(the counter-based noise makes the union equal to a one-process run), rank 0 gathers, scores and writes.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is the one-process identity.
"""
from __future__ import annotations

import os

import torch


def rank_and_world(device=None) -> tuple[int, int]:
    """``(rank, world)`` of an initialised (or torchrun-launched, then initialised here) process group:
    nccl when the evaluation runs on CUDA (each rank on its ``LOCAL_RANK`` GPU), gloo otherwise."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard(num: int, device=None) -> tuple[int, int]:
    """``[lo, hi)``: this rank's contiguous share of ``num`` sample indices."""
    rank, world = rank_and_world(device)
    return num * rank // world, num * (rank + 1) // world


def finish_distributed(failed: bool = False) -> None:
    """Barrier (unless ``failed``: the other ranks may never arrive) and destroy the process group, if any:
    a rank leaving with gloo threads alive aborts the interpreter at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_from_rank0(obj, device=None):
    """``obj`` of rank 0 on every rank (the schedule rank 0 chose from its scores); ``obj`` itself alone."""
    rank, world = rank_and_world(device)
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_on_rank0(local: torch.Tensor, stats: torch.Tensor, device=None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(the ranks' ``local`` tensors concatenated in rank order on rank 0, None elsewhere; the sum of the
    ranks' ``stats`` on every rank)``; alone: ``(local, stats)``."""
    rank, world = rank_and_world(device)
    if world == 1:
        return local, stats
    import torch.distributed as dist

    gathered, all_stats = [None] * world, [None] * world
    dist.all_gather_object(gathered, local)
    dist.all_gather_object(all_stats, stats)
    return (torch.cat(gathered) if rank == 0 else None), torch.stack(all_stats).sum(0)
