"""Sample export for external FID tools: ``covkernels sample --model ... --num N --out-dir DIR``.

- Files: ``DIR/000000.png, 000001.png, ...`` (8-bit RGB; grey models repeat their channel), or with
  ``--format npz`` one ``DIR/samples.npz`` holding ``arr_0``, uint8 ``(N, H, W, C)`` (the layout of the ADM
  evaluation suite; ``--reference`` reads it back). Pixels: ``round(255 (x - lo) / (hi - lo))`` of the
  model's ``data_range`` ([-1, 1] -> [0, 255]), clipped.
- Deterministic: sample i is drawn from the counter-based noise at index i (``sample_offset``), in the
  fixed batches ``[k B, (k + 1) B)`` of ``--batch-size`` B whatever the number of processes and whatever N
  (the last batch is drawn whole and cut at N), so one process and ``torchrun`` shards, and a run extended
  to a larger N, write the same bytes (the same batches run the same arithmetic; a different B gives the
  same samples up to float rounding, so a resume must keep B).
- Resumable: a batch whose files all exist and are complete is skipped (PNGs are written to a temporary
  name and renamed, and a PNG without its end chunk counts as missing); for npz the finished batches are
  kept under ``DIR/parts/`` until ``samples.npz`` is assembled. ``DIR/samples.json`` records what was
  sampled, and a resume with another model, sampler, schedule, seed, batch size or format is refused.
  A larger ``--num`` extends the set (npz: the batches a finished ``samples.npz`` covers are taken from
  it, the rest drawn); a smaller one writes nothing (a ``samples.npz`` of more samples is left as it is).
- ``torchrun``: rank r takes batches r, r + W, ...; rank 0 assembles the npz after the others finish.
"""
from __future__ import annotations

import json
import os
import shutil
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
    """This rank's share of the fixed batches ``[k B, min(N, (k + 1) B))``: every ``world``-th from ``rank``
    (the samples each batch keeps; the last one is still drawn whole, see :func:`export_samples`)."""
    starts = range(rank * batch_size, num, world * batch_size)
    return [(s, min(num, s + batch_size)) for s in starts]


def export_samples(draw: Callable[[int, int], torch.Tensor], num: int, out_dir: str, *, fmt: str = "png",
                   batch_size: int = 256, data_range=(-1.0, 1.0), config: dict | None = None, device=None,
                   progress: Callable[[int], None] | None = None) -> dict:
    """Write samples ``0 .. num - 1`` to ``out_dir``; ``draw(start, stop)`` returns samples ``start .. stop -
    1`` in the model's range, and is always called on a whole batch ``[k B, (k + 1) B)`` (the last one too,
    its samples from ``num`` on dropped), so that sample i is the same bytes whatever ``num``. Returns
    ``{"written", "skipped", "path", "count"}``: this rank's counts and the samples ``path`` holds (for an
    npz left from a larger ``num``, more than ``num``: it is kept as it is)."""
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
    held = npz_count(npz) if fmt == "npz" else 0  # rank 0 rewrites samples.npz only after the last barrier
    if fmt == "npz" and held >= num:  # finished, or left from a larger --num: kept as it is
        return {"written": 0, "skipped": num, "path": npz, "count": held}
    written = skipped = 0
    for start, stop in batches(num, batch_size, rank, world):
        todo = _missing(out_dir, fmt, start, stop, num, held)
        if todo:
            images = to_uint8(draw(start, start + batch_size).cpu(), data_range)[:stop - start]
            _store(out_dir, fmt, images, start, stop, num, todo)
        written, skipped = written + len(todo), skipped + (stop - start - len(todo))
        if progress:
            progress(stop - start)
    _barrier(world)
    if fmt == "npz" and rank == 0:
        _assemble(out_dir, num, batch_size, held)
    return {"written": written, "skipped": skipped, "path": npz if fmt == "npz" else out_dir, "count": num}


def _missing(out_dir: str, fmt: str, start: int, stop: int, num: int, held: int) -> list[int]:
    """The samples of batch ``[start, stop)`` still to write (npz: none where the part is finished or the
    ``held`` samples of an earlier samples.npz cover the batch)."""
    if fmt == "png":
        return [i for i in range(start, stop) if not png_complete(png_name(out_dir, i, num))]
    done = stop <= held or _part_complete(_part_name(out_dir, start, stop), stop - start)
    return [] if done else list(range(start, stop))


def _store(out_dir: str, fmt: str, images: torch.Tensor, start: int, stop: int, num: int, todo: list[int]) -> None:
    if fmt == "npz":
        return _write_part(_part_name(out_dir, start, stop), images)
    os.makedirs(out_dir, exist_ok=True)
    for i in todo:
        _write_png(png_name(out_dir, i, num), images[i - start])


def npz_count(path: str) -> int:
    """The samples in ``path``'s ``arr_0`` (0 where there is no finished file), read from the array's header
    rather than by loading the array (50,000 images are gigabytes)."""
    import zipfile

    import numpy as np

    headers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as f:
            version = np.lib.format.read_magic(f)
            if version in headers:
                return int(headers[version](f)[0][0])
        with np.load(path) as data:  # another header version: read it the slow way
            return int(data["arr_0"].shape[0])
    except (OSError, KeyError, ValueError, IndexError, zipfile.BadZipFile):
        return 0


def _assemble(out_dir: str, num: int, batch_size: int, held: int = 0) -> None:
    """``samples.npz`` from the first batches of the earlier samples.npz (the ``held`` samples it had) and
    the finished parts of the others (atomically); then the whole parts folder is removed, parts of an
    earlier ``--num`` included."""
    import numpy as np

    spans = batches(num, batch_size)
    covered = max([stop for _, stop in spans if stop <= held], default=0)
    pieces = []
    if covered:
        with np.load(os.path.join(out_dir, "samples.npz")) as data:
            pieces.append(data["arr_0"][:covered])
    pieces += [np.load(_part_name(out_dir, start, stop)) for start, stop in spans if stop > held]
    tmp = os.path.join(out_dir, "samples.tmp.npz")
    np.savez(tmp, arr_0=np.concatenate(pieces))
    os.replace(tmp, os.path.join(out_dir, "samples.npz"))
    parts = os.path.join(out_dir, "parts")
    if os.path.isdir(parts):
        shutil.rmtree(parts)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
