"""``digits_ideal``: the exact denoiser of the smoothed empirical distribution of the 1797 digits.

The data distribution is ``p(x) = (1/K) sum_k N(x; mu_k, tau^2 I)`` with ``mu_k`` the ``K = 1797``
scikit-learn digits, upsampled to ``1 x 16 x 16`` and scaled to [-1, 1] exactly as the trained ``digits``
model's data (:func:`upsampled_digits`). Noised to level ``sigma`` it is the same mixture with variance
``v = tau^2 + sigma^2``, so the posterior mean is closed-form:

    w_k(x)   = softmax_k(-|x - mu_k|^2 / (2 v))          (equal weights; |x|^2 cancels in the softmax)
    D(x, s)  = (tau^2 x + sigma^2 sum_k w_k mu_k) / v

It has real images, an exact score, exact samples and an exact likelihood, and many modes, so it separates a
sampler's error from a trained network's. The images ship as ``weights/digits_images.pt`` (float16 holds
them exactly: every pixel is a multiple of 1/128), so nothing here needs scikit-learn.

Its metrics (the ``digits_ideal`` testbed) are in :mod:`covkernels.eval.scorers` (``DigitsIdealScorer``).
"""
from __future__ import annotations

import math
from importlib import resources

import torch

from .gaussian import _ExactDenoiser, sigma_view

EVENT_SHAPE = (1, 16, 16)
IMAGE_FILE = "digits_images.pt"
DEFAULT_TAU = 0.03


def upsampled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """``(1797, 1, 16, 16)`` float32 images in [-1, 1] and ``(1797,)`` labels, from scikit-learn (needed
    here only: this writes the shipped file). Bilinear 8 -> 16 upsampling, as ``benchmarks/train_digits.py``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1), torch.tensor(d.target, dtype=torch.long)


def write_image_file(path) -> None:
    """Write the shipped image file (needs scikit-learn)."""
    x, y = upsampled_digits()
    if not torch.equal(x.half().float(), x):
        raise RuntimeError("the upsampled digits are no longer exact in float16")
    torch.save({"images": x.half(), "labels": y.to(torch.uint8)}, path)


def shipped_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped images ``(1797, 1, 16, 16)`` float64 in [-1, 1] and labels ``(1797,)`` int64."""
    path = resources.files("covkernels.models") / "weights" / IMAGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{IMAGE_FILE} is not in this installation of covkernels; reinstall it")
    with resources.as_file(path) as p:
        state = torch.load(p, map_location="cpu", weights_only=True)
    return state["images"].to(torch.float64), state["labels"].long()


class DigitsIdeal(_ExactDenoiser):
    """Exact ``D(x, sigma)`` of the tau-smoothed digits: ``x (B, 1, 16, 16)``, ``sigma`` scalar or ``(B,)``.

    Computed in float64 whatever the input dtype (returned in the input's dtype): the logits are
    ``(x . mu_k - |mu_k|^2 / 2) / v`` with ``v`` down to ``tau^2 ~ 1e-3``, where float32 rounding of the dot
    products would already move them by ~0.02. Differentiable (reverse and forward AD) in ``x``.
    """

    event_shape = EVENT_SHAPE

    def __init__(self, tau: float = DEFAULT_TAU, images: torch.Tensor | None = None):
        super().__init__()
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a positive finite number, got {tau!r}")
        if images is None:
            images, labels = shipped_digits()
        else:
            images = torch.as_tensor(images, dtype=torch.float64)
            if images.dim() != 4 or tuple(images.shape[1:]) != EVENT_SHAPE or images.shape[0] < 1:
                raise ValueError(f"images must be (K, 1, 16, 16), got {tuple(images.shape)}")
            labels = torch.full((images.shape[0],), -1, dtype=torch.long)
        self.tau = float(tau)
        self.register_buffer("means", images.flatten(1).contiguous())  # (K, 256)
        self.register_buffer("half_sq_norms", 0.5 * self.means.square().sum(1))  # (K,)
        self.register_buffer("labels", labels)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _logits(self, flat: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """``-|x - mu_k|^2 / (2 v)`` up to a per-row constant: ``(B, K)`` from ``flat (B, 256)``, ``var (B, 1)``."""
        return (flat @ self.means.to(flat.device).T - self.half_sq_norms.to(flat.device)) / var

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self._check_input(x)
        flat = x.flatten(1).to(torch.float64)
        s2 = sigma_view(sigma, flat) ** 2  # (B, 1)
        var = self.tau ** 2 + s2
        w = torch.softmax(self._logits(flat, var), dim=1)
        out = (self.tau ** 2 * flat + s2 * (w @ self.means.to(flat.device))) / var
        return out.view(x.shape).to(x.dtype)

    def log_prob(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """Exact log-density ``(B,)`` (float64) of ``x (B, 1, 16, 16)`` under the data distribution, or under
        its ``sigma``-noised marginal (the same mixture with variance ``tau^2 + sigma^2``)."""
        self._check_input(x)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        flat = x.flatten(1).to(self.means.device, torch.float64)
        var = self.tau ** 2 + float(sigma) ** 2
        d = flat.shape[1]
        sq = flat.square().sum(1) / (2 * var)  # the |x|^2 term the logits leave out
        return (torch.logsumexp(self._logits(flat, torch.tensor(var, dtype=torch.float64)), dim=1) - sq
                - math.log(self.num_components) - 0.5 * d * math.log(2 * math.pi * var))

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None,
               return_labels: bool = False):
        """``n`` exact samples ``(n, 1, 16, 16)`` (a uniform component, plus ``tau`` Gaussian noise), drawn
        from ``generator`` on the CPU; with ``return_labels`` also the component indices ``(n,)``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        k = torch.randint(0, self.num_components, (n,), generator=generator)
        xi = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = (self.means.cpu()[k] + self.tau * xi).view(n, *EVENT_SHAPE)
        x = x.to(device=device or self.means.device, dtype=dtype)
        return (x, k) if return_labels else x


def digits_ideal(tau: float = DEFAULT_TAU) -> DigitsIdeal:
    """The ``digits_ideal`` oracle with the shipped images."""
    return DigitsIdeal(tau)
