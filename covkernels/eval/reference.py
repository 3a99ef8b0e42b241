"""Reference data from disk (``--reference PATH``): the real images a model's samples are compared with.

Accepted: a folder of PNG / JPEG files (read with Pillow, in sorted file-name order; grey models get
``L``, colour models ``RGB``), or one ``.npy`` array, or an ``.npz`` with the array under ``arr_0`` (the
layout of ``covkernels sample --format npz`` and of the ADM evaluation suite) or as its only entry. Arrays
are ``(N, H, W, C)``, ``(N, C, H, W)`` or, for one channel, ``(N, H, W)``.

The conversion, stated once:

- Range: integer pixels are [0, 255] and map linearly onto the model's ``data_range``: ``x = lo + (hi -
  lo) v / 255`` ([0, 255] -> [-1, 1] by default), the inverse of how samples become PNGs. Float arrays
  must already be in the model's range (checked to 1e-3) and reach into its lower quarter (their minimum
  below ``lo + (hi - lo) / 4``): a float array in [0, 255] for a [-1, 1] model leaves the range, and one
  in [0, 1] sits inside it but never below 0, so both are refused rather than scored wrongly without a
  word. A float reference that is truly that bright is stored as uint8 (always accepted, unambiguous).
  Image files must be 8-bit (16-bit PNGs are refused: Pillow's conversion to 8 bits clips them).
- Shape: the channels must match. A different height and width is refused unless ``resize`` is given
  (``bilinear``, ``bicubic`` or ``area``): then the images are resized to the model's size, on the
  converted values, with antialiasing when shrinking; the aspect ratio must be the same (crop first:
  stretching a reference changes the statistics every metric compares).
- Size: fewer images than the samples they are compared with (``min_count``) is refused with both
  numbers.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RESIZE_MODES = ("bilinear", "bicubic", "area")
RANGE_TOLERANCE = 1e-3
# A float reference whose darkest value lies in the upper three quarters of the model's range is taken for data
# stored in another range (typically [0, 1] for a [-1, 1] model): real image sets reach their dark end.
LOWER_PART = 0.25


@dataclass(frozen=True)
class Reference:
    """Reference images ``images (M, *event_shape)`` float32 in the model's range; ``path`` as given;
    ``digest``: sha256 of the converted images (the feature cache's key); ``conversion``: what was done."""

    images: torch.Tensor
    path: str
    digest: str
    conversion: str

    @property
    def count(self) -> int:
        return self.images.shape[0]

    def record(self) -> dict:
        """The results file's ``reference`` block."""
        return {"path": self.path, "count": self.count, "sha256": self.digest, "conversion": self.conversion}


def digest(images: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def load_reference(path: str, event_shape, data_range=(-1.0, 1.0), *, resize: str | None = None,
                   min_count: int = 0) -> Reference:
    """Read ``path`` and convert it as the module docstring states. Raises ValueError naming ``--reference``."""
    event_shape = tuple(event_shape)
    if len(event_shape) != 3 or event_shape[0] not in (1, 3):
        raise ValueError(f"--reference: images need a model of shape (1 or 3, H, W), this one samples "
                         f"{event_shape}")
    if resize is not None and resize not in RESIZE_MODES:
        raise ValueError(f"--reference-resize must be one of {RESIZE_MODES}, got {resize!r}")
    raw = _read(path, event_shape[0])
    pixels = _to_nchw(raw, event_shape, path)
    images, how = _to_range(pixels, data_range, path)
    images, resized = _fit_size(images, event_shape, resize, path, data_range)
    if images.shape[0] < min_count:
        raise ValueError(f"--reference {path} holds {images.shape[0]} images, fewer than the {min_count} samples "
                         f"they are compared with; give at least {min_count} (or lower the sample count)")
    images = images.to(torch.float32).contiguous()
    return Reference(images, str(path), digest(images), how + resized)


def _read(path: str, channels: int):
    """The raw array of ``path`` (a torch tensor): images stacked ``(N, H, W, C)``, or the stored array."""
    if os.path.isdir(path):
        return _read_folder(path, channels)
    if not os.path.isfile(path):
        raise ValueError(f"--reference {path!r}: no such file or folder")
    import numpy as np

    if path.endswith(".npy"):
        return torch.from_numpy(np.load(path, allow_pickle=False))
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if "arr_0" not in keys and len(keys) != 1:
                raise ValueError(f"--reference {path}: an .npz needs its images under 'arr_0' or as its only "
                                 f"array, found {keys}")
            return torch.from_numpy(data["arr_0" if "arr_0" in keys else keys[0]])
    raise ValueError(f"--reference {path!r}: expected a folder of {'/'.join(IMAGE_SUFFIXES)} images, a .npy or "
                     f"an .npz file")


def _read_folder(path: str, channels: int) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("--reference: reading a folder of images needs Pillow: pip install "
                          "'covkernels[metrics]' (or pass an .npy / .npz array)") from exc
    import numpy as np

    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise ValueError(f"--reference {path}: the folder has no {'/'.join(IMAGE_SUFFIXES)} images")
    arrays, sizes = [], set()
    for name in names:
        with Image.open(os.path.join(path, name)) as img:
            _check_8bit(img, path, name)
            a = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        arrays.append(a.reshape(a.shape[0], a.shape[1], channels))
        sizes.add(a.shape[:2])
        if len(sizes) > 1:
            raise ValueError(f"--reference {path}: the images differ in size ({sorted(sizes)}; first at {name}); "
                             f"give images of one size")
    return torch.from_numpy(np.stack(arrays))


def _check_8bit(img, path: str, name: str) -> None:
    """Refuse an image of more than 8 bits per channel: Pillow's convert("L" / "RGB") clips 16-bit values to
    255 instead of scaling them, which would corrupt the reference without a word."""
    from PIL import ImageMode

    if ImageMode.getmode(img.mode).typestr not in ("|u1", "|b1"):
        raise ValueError(f"--reference {path}: {name} is a {img.mode!r} image, not 8 bits per channel (e.g. a "
                         f"16-bit PNG); convert the images to 8-bit, or give an .npy / .npz of uint8 pixels or of "
                         f"floats in the model's range")


def _to_nchw(raw: torch.Tensor, event_shape: tuple, path: str) -> torch.Tensor:
    """``(N, C, H, W)`` from ``(N, H, W, C)``, ``(N, C, H, W)`` or one-channel ``(N, H, W)``; the channel axis
    is the one of size C (channels last is tried first: images are stored that way)."""
    c = event_shape[0]
    if raw.dim() == 3 and c == 1:
        raw = raw.unsqueeze(-1)
    if raw.dim() == 4 and raw.shape[-1] == c:
        return raw.permute(0, 3, 1, 2)
    if raw.dim() == 4 and raw.shape[1] == c:
        return raw
    raise ValueError(f"--reference {path}: an array of shape {tuple(raw.shape)} is not N images of {c} channel(s) "
                     f"(N, H, W, {c}) or (N, {c}, H, W) for a model of shape {event_shape}")


def _to_range(pixels: torch.Tensor, data_range, path: str) -> tuple[torch.Tensor, str]:
    lo, hi = (float(v) for v in data_range)
    if not pixels.dtype.is_floating_point:
        if pixels.dtype == torch.bool or pixels.numel() and (int(pixels.min()) < 0 or int(pixels.max()) > 255):
            raise ValueError(f"--reference {path}: integer pixels must lie in [0, 255]")
        return lo + (hi - lo) * pixels.double() / 255.0, f"[0, 255] -> [{lo:g}, {hi:g}] linearly"
    values = pixels.double()
    if values.numel() and not bool(torch.isfinite(values).all()):
        raise ValueError(f"--reference {path}: the array holds NaN or Inf")
    low, high = (float(values.min()), float(values.max())) if values.numel() else (lo, hi)
    if low < lo - RANGE_TOLERANCE or high > hi + RANGE_TOLERANCE:
        raise ValueError(f"--reference {path}: float values must already be in the model's range [{lo:g}, {hi:g}], "
                         f"found [{low:.4g}, {high:.4g}] (store uint8 [0, 255] pixels to have them converted)")
    if low >= lo + LOWER_PART * (hi - lo):
        raise ValueError(f"--reference {path}: float values lie in [{low:.4g}, {high:.4g}], never in the lower quarter "
                         f"of the model's range [{lo:g}, {hi:g}]: they look stored in another range (e.g. [0, 1]). "
                         f"Convert them to the model's range (from x in [0, 1]: {lo:g} + {hi - lo:g} x), or store "
                         f"uint8 pixels round(255 v) of v in [0, 1], which are converted")
    return values.clamp(lo, hi), f"float, already in [{lo:g}, {hi:g}]"


def _fit_size(images: torch.Tensor, event_shape: tuple, resize: str | None, path: str,
              data_range) -> tuple[torch.Tensor, str]:
    have, want = tuple(images.shape[2:]), tuple(event_shape[1:])
    if have == want:
        return images, f"; {have[0]} x {have[1]}, no resize"
    if resize is None:
        raise ValueError(f"--reference {path}: images are {have[0]} x {have[1]}, the model samples {want[0]} x "
                         f"{want[1]}; pass --reference-resize {{{','.join(RESIZE_MODES)}}} to resize them")
    if have[0] * want[1] != have[1] * want[0]:
        raise ValueError(f"--reference {path}: images are {have[0]} x {have[1]}, the model samples {want[0]} x "
                         f"{want[1]}: another aspect ratio (crop the reference first; it is never stretched)")
    x = images.double()
    if resize == "area":
        out = torch.nn.functional.interpolate(x, size=want, mode="area")
    else:
        out = torch.nn.functional.interpolate(x, size=want, mode=resize, align_corners=False,
                                              antialias=want[0] < have[0])
    lo, hi = (float(v) for v in data_range)
    return out.clamp(lo, hi), f"; resized {have[0]} x {have[1]} -> {want[0]} x {want[1]} ({resize})"
