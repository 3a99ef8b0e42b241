"""Every fused backend against the reference, op by op and whole samplers.

On a CPU the Triton kernels run under TRITON_INTERPRET=1 (conftest sets it before anything imports
Triton); on a CUDA machine the same tests run the compiled kernels, plus bf16 and the race check.
Tolerances: float32 tight; half types by the 2x rule (the kernel's error against the float64 oracle is
at most twice the reference's own error at that dtype, plus a small floor). Outputs are NaN-poisoned
before every kernel runs, so an unwritten element fails the comparison.
"""
from __future__ import annotations

import pytest
import torch

import covkernels as ck
from conftest import gen, spd_matrix
from covkernels.ops import dispatch
from covkernels.ops.common import set_poison
from covkernels.ops.dct import reference as dct_ref
from covkernels.ops.lanczos import reference as lz_ref
from covkernels.ops.noise import reference as nz_ref
from covkernels.ops.rng import reference as rng_ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"


def _available():
    names = []
    for name in ("triton", "cpp", "cuda"):
        try:
            dispatch.resolve(name, DEVICE)
            names.append(name)
        except RuntimeError:
            pass
    return names


BACKENDS = _available()
if not BACKENDS:
    pytest.skip("no fused backend can run here (install triton, or build the extension)", allow_module_level=True)

HALF = [torch.float16] + ([torch.bfloat16] if ON_GPU else [])  # the interpreter emulates bf16 wrongly


@pytest.fixture(autouse=True)
def poison():
    previous = set_poison(True)
    yield
    set_poison(previous)


@pytest.fixture(params=BACKENDS)
def ops(request):
    return dispatch.resolve(request.param, DEVICE)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64).to(DEVICE, dtype)


def assert_2x_rule(kernel_out, ref_out, oracle, floor=1e-6):
    err_k = float((kernel_out.double() - oracle).abs().max())
    err_r = float((ref_out.double() - oracle).abs().max())
    assert err_k <= 2 * err_r + floor * float(oracle.abs().max().clamp_min(1)), (err_k, err_r)


IMAGE_SHAPES = [(1, 1, 8, 8), (3, 1, 16, 8), (2, 3, 16, 80), (5, 2, 32, 16)]


@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (1, 3000), (4, 1, 1, 1)])
def test_normal_stream(ops, shape):
    got = ops.normal(987654321012, shape, sample_offset=7, step=3, stream=rng_ref.STREAM_NOISE, device=DEVICE)
    ref = rng_ref.philox_normal(987654321012, shape, sample_offset=7, step=3, device=DEVICE)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("block,shape", [(k, s) for k in (4, 8, 16) for s in IMAGE_SHAPES
                                         if s[-1] % k == 0 and s[-2] % k == 0])
def test_block_dct_float32(ops, block, shape):
    x = randn(*shape)
    for basis_fn in (ops.analysis, ops.synthesis):
        got = basis_fn(x, "convdct", block)
        ref = (dct_ref.block_dct2 if basis_fn is ops.analysis else dct_ref.block_idct2)(x.double(), block)
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("block", [4, 8, 16])
def test_block_dct_half_precision(ops, dtype, block):
    x = randn(2, 3, 16, 32, dtype=dtype)
    oracle = dct_ref.block_dct2(x.double(), block)
    assert_2x_rule(ops.analysis(x, "convdct", block), dct_ref.block_dct2(x, block), oracle, floor=1e-3)


def test_non_contiguous_input_is_copied(ops):
    x = randn(2, 16, 16, 3).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    torch.testing.assert_close(ops.analysis(x, "convdct", 8), dct_ref.block_dct2(x, 8), rtol=0, atol=2e-6)


@pytest.mark.parametrize("basis,block", [("convdct", 4), ("convdct", 8), ("identity", 8), ("dct", 8)])
def test_probe_tangent(ops, basis, block):
    kw = dict(sample_offset=3, step=2, index=1, basis=basis, block=block, device=DEVICE)
    got = ops.probe_tangent(55, (3, 2, 8, 16), **kw)
    torch.testing.assert_close(got, nz_ref.probe_tangent(55, (3, 2, 8, 16), **kw), rtol=0, atol=2e-6)


STEP_CASES = [
    dict(basis="convdct", block=8, channel_average=True, c_max=1.0),
    dict(basis="convdct", block=4, channel_average=False, c_max=None),
    dict(basis="convdct", block=16, channel_average=True, c_max=0.5),
    dict(basis="identity", block=8, channel_average=False, c_max=1.0),
    dict(basis="identity", block=8, channel_average=True, c_max=None),
    dict(basis="dct", block=8, channel_average=True, c_max=1.0),
]


@pytest.mark.parametrize("probes", [1, 3])
@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: f"{c['basis']}{c['block']}-avg{c['channel_average']}")
def test_structured_step(ops, case, probes):
    shape = (3, 3, 16, 16)
    d, x = randn(*shape, seed=1), randn(*shape, seed=2) * 3
    jv = randn(probes, *shape, seed=3) * 0.5
    kw = dict(sample_offset=1, step=4, sigma_t=3.0, sigma_down=1.0, sigma_up=0.6, **case)
    got = ops.structured_step(d, x, jv, 4242, **kw)
    torch.testing.assert_close(got, nz_ref.structured_step(d, x, jv, 4242, **kw), rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", HALF)
def test_structured_step_half_precision(ops, dtype):
    shape = (2, 3, 16, 16)
    d, x, jv = randn(*shape, seed=1), randn(*shape, seed=2) * 3, randn(1, *shape, seed=3) * 0.5
    kw = dict(sample_offset=0, step=1, sigma_t=3.0, sigma_down=1.0, sigma_up=0.6, basis="convdct", block=8)
    oracle = nz_ref.structured_step(d.double(), x.double(), jv.double(), 7, **kw)
    low = [t.to(dtype) for t in (d, x, jv)]
    assert_2x_rule(ops.structured_step(*low, 7, **kw), nz_ref.structured_step(*low, 7, **kw), oracle, floor=2e-3)


def _lanczos_run(ops, reorth, k=5, d=300):
    a = spd_matrix(d, seed=4).to(DEVICE, torch.float32) * 0.3
    xi = randn(3, d, seed=5)
    basis = torch.zeros((k, 3, d), device=DEVICE)
    basis[0] = xi / xi.norm(dim=1, keepdim=True)
    hs, betas = [], []
    for j in range(k):
        h, beta = ops.lanczos_update(basis[j] @ a.T, basis, j, reorthogonalize=reorth)
        hs.append(torch.nn.functional.pad(h, (0, k - h.shape[1])))
        betas.append(beta)
    return basis, torch.stack(hs, 1), torch.stack(betas, 1), xi


@pytest.mark.parametrize("reorth", [True, False])
def test_lanczos_update(ops, reorth):
    got = _lanczos_run(ops, reorth)
    ref = _lanczos_run(dispatch.REFERENCE, reorth)
    for g, r in zip(got[:3], ref[:3]):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_lanczos_breakdown(ops):
    basis = torch.zeros((3, 2, 50), device=DEVICE)
    basis[0] = torch.nn.functional.normalize(randn(2, 50), dim=1)
    h, beta = ops.lanczos_update(torch.zeros(2, 50, device=DEVICE), basis, 0)
    assert torch.equal(beta, torch.zeros_like(beta)) and torch.equal(h, torch.zeros_like(h))
    assert torch.equal(basis[1], torch.zeros_like(basis[1]))


def test_lanczos_synthesis(ops):
    basis, _, _, xi = _lanczos_run(dispatch.REFERENCE, True, k=4)
    d, x, g = randn(3, 300, seed=6), randn(3, 300, seed=7), randn(3, 3, seed=8)
    kw = dict(sigma_t=2.0, sigma_down=0.7)
    got = ops.lanczos_synthesis(d, x, basis, g, xi.norm(dim=1), **kw)
    torch.testing.assert_close(got, lz_ref.lanczos_synthesis(d, x, basis, g, xi.norm(dim=1), **kw), rtol=0,
                               atol=1e-5)


@pytest.mark.parametrize("sampler,options", [
    ("cov_ddim", {"block": 8}), ("cov_ddim", {"basis": "identity"}), ("diag_hutchinson", {"probes": 2}),
    ("lanczos", {"lanczos_steps": 3}), ("lanczos", {"reorthogonalize": False}),
])
def test_whole_sampler_matches_reference(ops, sampler, options):
    from covkernels.models import get_model

    model = get_model("gmm", size=8).to(DEVICE)  # small: the CPU interpreter runs every program in Python
    x = randn(3, 3, 8, 8, seed=9) * 20
    sigmas = ck.karras_sigmas(4, 0.05, 20.0, device=DEVICE)
    runs = [ck.get_sampler(sampler)(model, x, sigmas, disable=True, generator=gen(1), backend=b, jvp="forward_ad",
                                    **options) for b in (ops.name, "reference")]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-4, atol=1e-4)


def test_repeat_runs_are_bitwise_identical(ops):
    """Race check (meaningful on a GPU; the interpreter is sequential): same input, same bits."""
    shape = (4, 3, 32, 32)
    d, x, jv = randn(*shape, seed=1), randn(*shape, seed=2), randn(1, *shape, seed=3)
    kw = dict(sample_offset=0, step=0, sigma_t=2.0, sigma_down=1.0, sigma_up=0.5, basis="convdct", block=8)
    assert torch.equal(ops.structured_step(d, x, jv, 1, **kw), ops.structured_step(d, x, jv, 1, **kw))
    first, second = _lanczos_run(ops, True), _lanczos_run(ops, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_triton_needs_power_of_two_blocks_and_a_device(monkeypatch):
    if "triton" not in BACKENDS:
        pytest.skip("triton not available")
    tr = dispatch.resolve("triton", DEVICE)
    with pytest.raises(ValueError, match="power-of-two block, got block=12"):
        tr.analysis(randn(1, 1, 24, 24), "convdct", 12)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = dispatch._device_ok("triton", torch.device("cpu"))
    assert not ok and "need CUDA tensors" in why
