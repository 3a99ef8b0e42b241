"""Reference ops against float64 ground truth: the Philox stream and the DCT transforms."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import gen
from covkernels.ops.dct import reference as dct
from covkernels.ops.rng import reference as rng

# Known-answer vectors of Philox4x32-10 (Random123's published test vectors).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = rng.philox4x32(tuple(torch.tensor(c) for c in counter), key)
    assert tuple(int(w) for w in out) == expected


def test_philox_matches_triton_when_available():
    """Same integer stream as Triton's tl.randint4x (seed -> key, offset -> counter word 0)."""
    triton = pytest.importorskip("triton")
    import os
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    import triton.language as tl

    @triton.jit
    def kernel(out, seed, n: tl.constexpr):
        o = tl.arange(0, n)
        a, b, c, d = tl.randint4x(seed, o)
        tl.store(out + 4 * o, a)
        tl.store(out + 4 * o + 1, b)
        tl.store(out + 4 * o + 2, c)
        tl.store(out + 4 * o + 3, d)

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    seed = 0x299F31D0A4093822
    got = torch.zeros(64, dtype=torch.int32, device=dev)
    kernel[(1,)](got, seed, 16)
    words = rng.philox4x32((torch.arange(16), 0, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))
    ref = torch.stack(words, 1).flatten()
    assert torch.equal(got.cpu().to(torch.int64) & 0xFFFFFFFF, ref)


def test_streams_are_per_sample_and_batch_independent():
    full = rng.philox_normal(5, (6, 3, 4, 4), step=2)
    part = rng.philox_normal(5, (3, 3, 4, 4), step=2, sample_offset=2)
    assert torch.equal(full[2:5], part)
    assert not torch.equal(full, rng.philox_normal(5, (6, 3, 4, 4), step=3))
    assert not torch.equal(full, rng.philox_normal(6, (6, 3, 4, 4), step=2))
    assert not torch.equal(full, rng.philox_normal(5, (6, 3, 4, 4), step=2, stream=rng.STREAM_INIT))


def test_normal_and_rademacher_distributions():
    n = rng.philox_normal(1, (64, 64, 64)).flatten().double()
    assert abs(float(n.mean())) < 5 / math.sqrt(n.numel())
    assert abs(float(n.var()) - 1) < 5 * math.sqrt(2 / n.numel())
    assert abs(float((n ** 4).mean()) - 3) < 0.03  # Gaussian kurtosis
    r = rng.philox_rademacher(1, (64, 64, 64))
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(r.mean())) < 5 / math.sqrt(r.numel())


def test_dct_matrix_is_orthonormal_dct_ii():
    n = 8
    m = dct.dct_matrix(n)
    torch.testing.assert_close(m @ m.T, torch.eye(n, dtype=torch.float64))
    k, i = 3, 5
    assert math.isclose(float(m[k, i]), math.sqrt(2 / n) * math.cos(math.pi * (2 * i + 1) * k / (2 * n)))
    assert math.isclose(float(m[0, 0]), 1 / math.sqrt(n))


def _dense_global(h, w):
    return torch.kron(dct.dct_matrix(h), dct.dct_matrix(w))


def _dense_block(h, w, k):
    """Dense (HW, HW) matrix of the blockwise transform with in-place coefficient layout."""
    m = dct.dct_matrix(k)
    a = torch.zeros(h * w, h * w, dtype=torch.float64)
    for bi in range(h // k):
        for bj in range(w // k):
            rows = [(bi * k + u) * w + bj * k + v for u in range(k) for v in range(k)]
            a[torch.tensor(rows).view(-1, 1), torch.tensor(rows).view(1, -1)] = torch.kron(m, m)
    return a


@pytest.mark.parametrize("h,w", [(8, 8), (6, 10), (16, 4)])
def test_global_dct_against_dense_matrix(h, w):
    x = torch.randn(2, 3, h, w, generator=gen(1), dtype=torch.float64)
    a = _dense_global(h, w)
    c = dct.dct2(x)
    torch.testing.assert_close(c.flatten(2), x.flatten(2) @ a.T)
    torch.testing.assert_close(dct.idct2(c), x)


@pytest.mark.parametrize("k,h,w", [(4, 8, 12), (8, 16, 8), (2, 4, 4), (16, 16, 32)])
def test_block_dct_against_dense_matrix(k, h, w):
    x = torch.randn(2, 2, h, w, generator=gen(2), dtype=torch.float64)
    a = _dense_block(h, w, k)
    c = dct.block_dct2(x, k)
    torch.testing.assert_close(c.flatten(2), x.flatten(2) @ a.T)
    torch.testing.assert_close(dct.block_idct2(c, k), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("basis", dct.BASES)
def test_transforms_at_working_dtype(dtype, basis):
    """Low-precision storage: error within a few ulps of the dtype (float32 accumulation)."""
    x64 = torch.randn(2, 3, 16, 16, generator=gen(3), dtype=torch.float64)
    ref = dct.analysis(x64, basis, 8)
    got = dct.analysis(x64.to(dtype), basis, 8)
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert float((got.double() - ref).abs().max()) < 4 * eps * float(x64.abs().max()) * 4


def test_block_must_tile():
    x = torch.zeros(1, 1, 12, 8)
    with pytest.raises(ValueError, match="block=8 does not tile"):
        dct.block_dct2(x, 8)
    with pytest.raises(ValueError, match="block must be a positive int"):
        dct.block_dct2(x, 0)
    with pytest.raises(ValueError, match="basis must be one of"):
        dct.analysis(x, "fft")


def test_streams_build_counters_on_the_target_device():
    """No CPU tensor may leak into the counters (that would break CUDA); the meta device shows it on CPU."""
    out = rng.philox_normal(3, (2, 3, 4), step=5, stream=2, device="meta")
    assert out.device.type == "meta" and out.shape == (2, 3, 4)


def test_dct_matrix_cache_cannot_be_corrupted():
    dct.dct_matrix(4).mul_(0)
    torch.testing.assert_close(dct.dct_matrix(4) @ dct.dct_matrix(4).T, torch.eye(4, dtype=torch.float64))
