"""Sample export for external FID tools: ``covkernels sample --model ... --num N --out-dir DIR``.

- Files: ``DIR/000000.png, 000001.png, ...`` (8-bit RGB; grey models repeat their channel), or with
  ``--format npz`` one ``DIR/samples.npz`` holding ``arr_0``, uint8 ``(N, H, W, C)`` (the layout of the ADM
  evaluation suite; ``--reference`` reads it back). Pixels: ``round(255 (x - lo) / (hi - lo))`` of the
  model's ``data_range`` ([-1, 1] -> [0, 255]), clipped.
- Deterministic: sample i is drawn from the counter-based noise at index i (``sample_offset``), in the
  fixed batches ``[k B, (k + 1) B)`` of ``--batch-size`` B whatever the number of processes, so one process
  and ``torchrun`` shards write the same bytes (the same batches run the same arithmetic; a different B
  gives the same samples up to float rounding, so a resume must keep B).
- Resumable: a batch whose files all exist and are complete is skipped (PNGs are written to a temporary
  name and renamed, and a PNG without its end chunk counts as missing); for npz the finished batches are
  kept under ``DIR/parts/`` until ``samples.npz`` is assembled. ``DIR/samples.json`` records what was
  sampled, and a resume with another model, sampler, schedule, seed, batch size or format is refused
  (a larger ``--num`` extends the set).
- ``torchrun``: rank r takes batches r, r + W, ...; rank 0 assembles the npz after the others finish.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import torch

from .distributed import rank_and_world
from .features import to_uint8

FORMATS = ("png", "npz")
MANIFEST = "samples.json"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def png_name(out_dir: str, index: int, num: int) -> str:
    width = 6 if num <= 10 ** 6 else len(str(num - 1))
    return os.path.join(out_dir, f"{index:0{width}d}.png")


def png_complete(path: str) -> bool:
    """Whether ``path`` is a PNG that was written to its end."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(-len(PNG_END), os.SEEK_END)
            return head == b"\x89PNG\r\n\x1a\n" and f.read() == PNG_END
    except OSError:
        return False


def check_manifest(out_dir: str, config: dict) -> None:
    """Refuse a ``DIR`` that holds samples of another configuration (ValueError naming ``--out-dir``)."""
    config = json.loads(json.dumps(config))
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f).get("config", {})
    differs = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    if differs:
        raise ValueError(f"--out-dir {out_dir} holds samples of another configuration (differs in {differs}); "
                         f"choose another folder or empty it")


def write_manifest(out_dir: str, config: dict, num: int) -> None:
    from .._version import __version__

    path = os.path.join(out_dir, MANIFEST)
    num = max(num, _recorded_num(path))
    with open(path + ".tmp", "w") as f:
        json.dump({"config": config, "num": num, "covkernels": __version__, "torch": torch.__version__}, f, indent=1)
    os.replace(path + ".tmp", path)


def _recorded_num(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("num", 0))


def _write_png(path: str, image: torch.Tensor) -> None:
    from ..imageio import write_png

    write_png(path + ".tmp", image.expand(3, -1, -1).permute(1, 2, 0))
    os.replace(path + ".tmp", path)


def _part_name(out_dir: str, start: int, stop: int) -> str:
    return os.path.join(out_dir, "parts", f"{start:09d}-{stop:09d}.npy")


def _part_complete(path: str, count: int) -> bool:
    import numpy as np

    try:
        return np.load(path, mmap_mode="r").shape[0] == count
    except (OSError, ValueError):
        return False


def _write_part(path: str, images: torch.Tensor) -> None:
    import numpy as np

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        np.save(f, images.permute(0, 2, 3, 1).contiguous().numpy())
    os.replace(path + ".tmp", path)


def batches(num: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """This rank's share of the fixed batches ``[k B, min(N, (k + 1) B))``: every ``world``-th from ``rank``."""
    starts = range(rank * batch_size, num, world * batch_size)
    return [(s, min(num, s + batch_size)) for s in starts]


def export_samples(draw: Callable[[int, int], torch.Tensor], num: int, out_dir: str, *, fmt: str = "png",
                   batch_size: int = 256, data_range=(-1.0, 1.0), config: dict | None = None, device=None,
                   progress: Callable[[int], None] | None = None) -> dict:
    """Write samples ``0 .. num - 1`` to ``out_dir``; ``draw(start, stop)`` returns samples ``start .. stop -
    1`` in the model's range. Returns ``{"written", "skipped", "path"}`` (this rank's counts)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    rank, world = rank_and_world(device)
    npz = os.path.join(out_dir, "samples.npz")
    config = {**(config or {}), "format": fmt, "batch_size": batch_size, "data_range": list(data_range)}
    check_manifest(out_dir, config)
    _barrier(world)  # every rank checked before rank 0 writes the manifest
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        write_manifest(out_dir, config, num)
    if fmt == "npz" and _npz_complete(npz, num):
        return {"written": 0, "skipped": num, "path": npz}
    written = skipped = 0
    for start, stop in batches(num, batch_size, rank, world):
        todo = _missing(out_dir, fmt, start, stop, num)
        if todo:
            images = to_uint8(draw(start, stop).cpu(), data_range)
            _store(out_dir, fmt, images, start, stop, num, todo)
        written, skipped = written + len(todo), skipped + (stop - start - len(todo))
        if progress:
            progress(stop - start)
    _barrier(world)
    if fmt == "npz" and rank == 0:
        _assemble(out_dir, num, batch_size)
    return {"written": written, "skipped": skipped, "path": npz if fmt == "npz" else out_dir}


def _missing(out_dir: str, fmt: str, start: int, stop: int, num: int) -> list[int]:
    if fmt == "png":
        return [i for i in range(start, stop) if not png_complete(png_name(out_dir, i, num))]
    return [] if _part_complete(_part_name(out_dir, start, stop), stop - start) else list(range(start, stop))


def _store(out_dir: str, fmt: str, images: torch.Tensor, start: int, stop: int, num: int, todo: list[int]) -> None:
    if fmt == "npz":
        return _write_part(_part_name(out_dir, start, stop), images)
    os.makedirs(out_dir, exist_ok=True)
    for i in todo:
        _write_png(png_name(out_dir, i, num), images[i - start])


def _npz_complete(path: str, num: int) -> bool:
    import numpy as np

    try:
        with np.load(path) as data:
            return data["arr_0"].shape[0] == num
    except (OSError, KeyError, ValueError):
        return False


def _assemble(out_dir: str, num: int, batch_size: int) -> None:
    """``samples.npz`` from the finished parts (atomically), then the parts are removed."""
    import numpy as np

    parts = [_part_name(out_dir, s, e) for s, e in batches(num, batch_size)]
    arr = np.concatenate([np.load(p) for p in parts])
    tmp = os.path.join(out_dir, "samples.tmp.npz")
    np.savez(tmp, arr_0=arr)
    os.replace(tmp, os.path.join(out_dir, "samples.npz"))
    for p in parts:
        os.remove(p)
    os.rmdir(os.path.dirname(parts[0]))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
