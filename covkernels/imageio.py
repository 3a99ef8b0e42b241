"""Image grids written as PNG with the standard library only (zlib), so the demo needs no imaging package."""
from __future__ import annotations

import math
import os
import struct
import zlib

import torch


def to_uint8_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> torch.Tensor:
    """``(B, C, H, W)`` images in [-1, 1] (C = 1 or 3) -> ``(rows, cols, 3)`` uint8 grid."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1|3, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    img = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).expand(b, 3, h, w)
    if scale > 1:
        img = img.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        h, w = h * scale, w * scale
    grid = torch.full((3, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for k in range(b):
        r, q = divmod(k, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img[k]
    return grid.permute(1, 2, 0).contiguous()


def write_png(path: str, rgb: torch.Tensor) -> None:
    """Write an ``(H, W, 3)`` uint8 tensor as an 8-bit RGB PNG."""
    h, w, _ = rgb.shape
    rows = torch.cat([torch.zeros(h, 1, dtype=torch.uint8), rgb.reshape(h, w * 3).to(torch.uint8)], dim=1)
    raw = bytes(rows.flatten().tolist())  # filter type 0 on every row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def save_grid(x: torch.Tensor, path: str, nrow: int | None = None, scale: int = 1) -> None:
    """Save ``(B, C, H, W)`` images in [-1, 1] as one PNG grid; ``path`` must end in ``.png`` (PNG is the
    only format written, and PNG bytes under another suffix mislead viewers)."""
    if os.path.splitext(str(path))[1].lower() != ".png":
        raise ValueError(f"path must name a .png file (the grid is written as PNG), got {str(path)!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")
    write_png(path, to_uint8_grid(x, nrow=nrow, scale=scale))
