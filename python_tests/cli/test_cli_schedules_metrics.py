"""Command line, schedules and the Frechet distance."""
from __future__ import annotations

import math
import struct
import subprocess
import sys
import zlib

import pytest
import torch

import covkernels as ck
from helpers import gen, spd_matrix
from covkernels.cli import main
from covkernels.eval.metrics import frechet_distance


def read_png(path):
    """Minimal decoder for the 8-bit RGB, filter-0 PNGs the package writes: returns (H, W, 3) uint8."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(tag + body) & 0xFFFFFFFF
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + n
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    raw = torch.tensor(list(zlib.decompress(chunks[b"IDAT"])), dtype=torch.uint8).view(h, 1 + 3 * w)
    assert bool((raw[:, 0] == 0).all())
    return raw[:, 1:].reshape(h, w, 3)


def test_cli_sample_writes_grid_and_quality_line(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", "gmm", "--sampler", "cov_ddim", "--steps", "3", "--num", "4",
                 "--num-eval", "64", "--out", str(out), "--quiet", "--scale", "1", "--cov-sigma-max", "inf"]) == 0
    text = capsys.readouterr().out
    assert "cov_ddim on gmm: 3 steps, 5 NFE/sample" in text
    assert "Frechet distance to exact samples, 4x4 average-pooled pixels (N=64): fd_pooled " in text
    img = read_png(out)
    assert img.shape == (2 * 18 + 2, 2 * 18 + 2, 3)  # the gmm testbed's 16 x 16 images, 2 px padding
    assert img.float().std() > 10  # not a blank image


def test_cli_batch_size_does_not_change_samples(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    common = ["sample", "--sampler", "lanczos", "--steps", "3", "--num", "6", "--num-eval", "0", "--quiet"]
    main(common + ["--out", str(a), "--batch-size", "6"])
    main(common + ["--out", str(b), "--batch-size", "4"])
    assert torch.equal(read_png(a), read_png(b))


def test_cli_info_and_module_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "covkernels", "info"], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout  # cwd: import the installed package, not the source tree
    assert "reference  available" in out
    for name in ("triton", "cpp", "cuda"):
        assert f"{name} " in out
    assert "unavailable" in out


def test_karras_schedule_formula():
    s = ck.karras_sigmas(5, 0.1, 10.0, rho=7.0)
    assert s.dtype == torch.float32 and s.shape == (6,) and float(s[-1]) == 0
    for i in range(5):
        t = i / 4
        expected = (10 ** (1 / 7) + t * (0.1 ** (1 / 7) - 10 ** (1 / 7))) ** 7
        assert math.isclose(float(s[i]), expected, rel_tol=1e-5)


def test_exponential_vp_and_linear_beta_schedules():
    s = ck.exponential_sigmas(4, 0.1, 10.0)
    assert torch.allclose(s[:-1].log().diff(), torch.full((3,), math.log(0.1 / 10) / 3))
    v = ck.vp_sigmas(3)
    assert math.isclose(float(v[0]), math.sqrt(math.exp(19.9 / 2 + 0.1) - 1), rel_tol=1e-5)
    lb = ck.linear_beta_sigmas(10)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    assert math.isclose(float(lb[0]), float(((1 - ac[999]) / ac[999]).sqrt()), rel_tol=1e-6)
    assert math.isclose(float(lb[-2]), float(((1 - ac[99]) / ac[99]).sqrt()), rel_tol=1e-6)
    assert bool((lb[1:] < lb[:-1]).all())


def test_frechet_distance_against_the_closed_form():
    """Exact algebra: the Gram-matrix trick equals the textbook formula with explicit matrix roots."""
    d = 5
    x = torch.randn(400, d, generator=gen(1), dtype=torch.float64)
    y = torch.randn(300, d, generator=gen(2), dtype=torch.float64) @ spd_matrix(d, seed=3) + 0.5
    mx, my = x.mean(0), y.mean(0)
    cx, cy = torch.cov(x.T), torch.cov(y.T)

    def sqrtm(m):
        e, v = torch.linalg.eigh(m)
        return (v * e.clamp_min(0).sqrt()) @ v.T

    r = sqrtm(cx)
    expected = (mx - my).square().sum() + cx.trace() + cy.trace() - 2 * sqrtm(r @ cy @ r).trace()
    assert math.isclose(frechet_distance(x, y), float(expected), rel_tol=1e-9)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_linear_beta_lengths_for_every_step_count(spacing):
    for n in range(1, 1001):
        s = ck.linear_beta_sigmas(n, spacing=spacing)
        assert s.shape == (n + 1,), n
        assert bool((s[1:] < s[:-1]).all()), n


def test_cli_reports_bad_options_in_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--sampler", "cov_ddim", "--block", "5", "--num", "2", "--num-eval", "0", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == ("covkernels: error: block=5 does not tile x of spatial size 16x16: H and W must be "
                           "multiples of the block (pad or crop the image, or choose another block)")
    with pytest.raises(SystemExit):
        main(["sample", "--device", "banana"])
    assert "--device 'banana' is not a torch device" in capsys.readouterr().err
