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
from helpers import gen, spd_matrix
from covkernels.ops import dispatch, library
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


# --- what a backend runs, and the fallbacks dispatch reports ------------------------------------------------

def _tensor(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


IMAGE, IMAGE64 = _tensor(2, 3, 16, 16), _tensor(2, 3, 16, 16, dtype=torch.float64)
STEP = dict(seed=0, sample_offset=0, step=0, sigma_t=2.0, sigma_down=1.0, sigma_up=0.5, channel_average=True,
            c_max=1.0)
PROBE = dict(seed=0, sample_offset=0, step=0, index=0, device=None)


def _step_args(x_t, *, basis="convdct", block=8, denoised=None):
    return dict(STEP, denoised=x_t if denoised is None else denoised, x_t=x_t, jvps=x_t.unsqueeze(0), basis=basis,
                block=block)


# (backend, op folder, op, args, the reason supports must give: None = the backend runs it)
SUPPORT_CASES = [
    ("triton", "dct", "analysis", dict(x=IMAGE, basis="dct", block=8), "global DCT basis"),
    ("triton", "dct", "synthesis", dict(c=IMAGE64, basis="convdct", block=8), "float64"),
    ("triton", "dct", "analysis", dict(x=IMAGE, basis="convdct", block=16), "block 16 > 8"),
    ("triton", "dct", "analysis", dict(x=IMAGE, basis="convdct", block=8), None),
    ("triton", "dct", "analysis", dict(x=IMAGE, basis="convdct", block=12), None),  # an error of the op
    ("triton", "dct", "analysis", dict(x=IMAGE64, basis="identity", block=8), None),
    ("triton", "noise", "probe_tangent", dict(PROBE, shape=IMAGE.shape, basis="dct", block=8,
                                               dtype=torch.float32), "global DCT basis"),
    ("triton", "noise", "probe_tangent", dict(PROBE, shape=IMAGE.shape, basis="convdct", block=8,
                                               dtype=torch.float64), "float64"),
    ("triton", "noise", "probe_tangent", dict(PROBE, shape=IMAGE.shape, basis="convdct", block=16,
                                               dtype=torch.float32), "block 16 > 8"),
    ("triton", "noise", "structured_step", _step_args(IMAGE64), "float64"),
    ("triton", "noise", "structured_step", _step_args(IMAGE, block=16), "block 16 > 8"),
    ("triton", "noise", "structured_step", _step_args(IMAGE, basis="identity", block=16), None),
    ("triton", "lanczos", "lanczos_update", dict(aq=IMAGE64, basis=IMAGE64.unsqueeze(0), j=0,
                                                 reorthogonalize=True), "float64"),
    ("triton", "lanczos", "lanczos_synthesis", dict(denoised=IMAGE64, x_t=IMAGE64), "float64"),
    ("triton", "rng", "philox_normal", dict(seed=0, shape=(2, 3), dtype=torch.float64), None),
    ("cpp", "dct", "synthesis", dict(c=IMAGE, basis="dct", block=8), "global DCT basis"),
    ("cpp", "dct", "analysis", dict(x=IMAGE64, basis="convdct", block=16), None),
    ("cpp", "noise", "probe_tangent", dict(PROBE, shape=(2, 1, 3, 16, 16), basis="convdct", block=8,
                                            dtype=torch.float32), "5-D input"),
    ("cpp", "noise", "probe_tangent", dict(PROBE, shape=(2, 48), basis="identity", block=8,
                                            dtype=torch.float32), None),
    ("cpp", "noise", "structured_step", _step_args(_tensor(2, 3, 16)), "3-D input"),
    ("cpp", "noise", "structured_step", _step_args(IMAGE, denoised=IMAGE.half()),
     "mixed input dtypes (float16, float32, float32)"),
    ("cpp", "noise", "structured_step", _step_args(IMAGE64, basis="dct"), None),
    ("cpp", "lanczos", "lanczos_synthesis", dict(denoised=IMAGE.half(), x_t=IMAGE),
     "mixed input dtypes (float16, float32)"),
    ("cpp", "lanczos", "lanczos_update", dict(aq=IMAGE64, basis=IMAGE64.unsqueeze(0), j=0), None),
]


def _backend_module(backend: str, folder: str):
    if backend == "triton":
        pytest.importorskip("triton")
    elif dispatch.extension_status()[0] is None:
        pytest.skip("covkernels._C is not built here")
    import importlib

    return importlib.import_module(f"covkernels.ops.{folder}.{backend}")


@pytest.mark.parametrize("backend,folder,op,args,reason", SUPPORT_CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[4]}" for c in SUPPORT_CASES])
def test_supports_gives_the_reason_a_backend_declines(backend, folder, op, args, reason):
    assert _backend_module(backend, folder).supports(op, **args) == reason


@pytest.mark.parametrize("folder,op", [("rng", "philox_normal"), ("dct", "analysis"), ("noise", "structured_step"),
                                       ("lanczos", "lanczos_synthesis")])
def test_the_reference_supports_everything_and_every_module_knows_its_ops(folder, op):
    import importlib

    ref = importlib.import_module(f"covkernels.ops.{folder}.reference")
    assert ref.supports(op, anything=1) is None
    with pytest.raises(ValueError, match=f"covkernels.ops.{folder}.reference has no op 'lanczos_step'"):
        ref.supports("lanczos_step")


# one declined call per backend: (backend, op, arguments, reason)
FALLBACK_CASES = {"triton": ("analysis", (randn(2, 3, 16, 16, dtype=torch.float64), "convdct", 8), "float64"),
                  "cpp": ("analysis", (randn(2, 3, 16, 16), "dct", 8), "global DCT basis")}


@pytest.fixture
def fresh_fallbacks(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_FALLBACKS", {})
    caplog.set_level("WARNING", logger="covkernels.ops.dispatch")
    return caplog


@pytest.mark.parametrize("name", [b for b in BACKENDS if b in FALLBACK_CASES])
def test_a_fallback_runs_the_reference_is_reported_once_and_listed_by_info(name, fresh_fallbacks):
    import io

    from covkernels.system_info import info_dict

    op, args, reason = FALLBACK_CASES[name]
    expected = getattr(dispatch.REFERENCE, op)(*args)
    for _ in range(2):  # the reference's bits: the same path as before supports() existed
        assert torch.equal(getattr(dispatch.resolve(name, DEVICE), op)(*args), expected)
    assert torch.equal(getattr(library.resolve(name, DEVICE), op)(*args), expected)  # the registered op too
    assert dispatch.fallbacks() == [dispatch.Fallback(op, name, reason, 3)]
    logged = [r.getMessage() for r in fresh_fallbacks.records if r.name == "covkernels.ops.dispatch"]
    assert logged == [f"covkernels: the {name} backend does not run {op} on these arguments ({reason}); the "
                      f"reference runs it instead (said once per process; covkernels.info() lists every fallback)"]
    assert info_dict()["backend_fallbacks"] == [{"op": op, "backend": name, "reason": reason, "calls": 3}]
    out = io.StringIO()
    ck.info(file=out)
    assert f"  {name:<10} {op}: {reason} (3 call(s))" in out.getvalue()


def test_supported_and_invalid_arguments_are_no_fallback(ops, fresh_fallbacks):
    x = randn(2, 3, 16, 16)
    torch.testing.assert_close(ops.analysis(x, "convdct", 8), dct_ref.block_dct2(x, 8), rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="does not tile"):  # the reference raises: no fallback happened
        ops.analysis(randn(1, 1, 24, 24, dtype=torch.float64), "convdct", 16)
    assert dispatch.fallbacks() == [] and fresh_fallbacks.records == []


def test_a_backend_called_directly_refuses_what_it_declines():
    tr = _backend_module("triton", "dct")
    with pytest.raises(NotImplementedError, match=r"triton backend does not run analysis .*\(global DCT basis\)"):
        tr.analysis(IMAGE, "dct", 8)
    with pytest.raises(ValueError, match="basis must be one of"):
        tr.synthesis(IMAGE, "wavelet", 8)
