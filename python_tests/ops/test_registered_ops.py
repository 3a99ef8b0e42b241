"""The fused ops as registered custom ops (``torch.ops.covkernels.*``): ``torch.library.opcheck`` over every
op, every backend that runs here and the dtypes each supports; fake implementations under dynamic batch
sizes; the registered ops equal the backend functions they wrap.

opcheck runs the schema check, the autograd-registration check, the fake-tensor check (the fake
implementation's shapes/dtypes/strides against the real op's) and AOT dispatch with static and dynamic
shapes. Outputs are NaN-poisoned while the kernels run, as in test_backends.py.
"""
from __future__ import annotations

import pytest
import torch

from helpers import gen
from covkernels.ops import dispatch, library
from covkernels.ops.common import set_poison

OPS = torch.ops.covkernels


def _runnable():
    names = ["reference"]
    for name in ("cpp", "triton"):
        try:
            dispatch.resolve(name, "cpu")
            names.append(name)
        except RuntimeError:
            pass
    return names


BACKENDS = _runnable()
# float16 storage is supported by every backend (bf16 is not emulated correctly by the Triton interpreter);
# float64 runs natively in cpp and through the reference in triton.
DTYPES = {"reference": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
          "cpp": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
          "triton": (torch.float32, torch.float64, torch.float16)}
CASES = [(b, d) for b in BACKENDS for d in DTYPES[b]]
CASE_IDS = [f"{b}-{str(d).split('.')[-1]}" for b, d in CASES]
SHAPE = (2, 3, 8, 16)
KEY = library.stream_key(987654321012, 3, 2)


@pytest.fixture(autouse=True)
def poison():
    previous = set_poison(True)
    yield
    set_poison(previous)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64).to(dtype)


def test_every_op_is_registered_with_a_schema():
    assert sorted(library.OPS) == sorted(["philox_normal", "analysis", "synthesis", "probe_tangent",
                                          "structured_step", "lanczos_update", "krylov_sqrt_e1", "lanczos_synthesis"])
    for name, op in library.OPS.items():
        assert str(op.default._schema).startswith(f"covkernels::{name}(")
    basis = OPS.lanczos_update.default._schema.arguments[1]
    assert basis.name == "basis" and basis.alias_info.is_write  # the in-place row write is declared


@pytest.mark.parametrize("backend,dtype", CASES, ids=CASE_IDS)
def test_opcheck_rng_and_probe(backend, dtype):
    torch.library.opcheck(OPS.philox_normal, (KEY, list(SHAPE), 1, dtype, torch.device("cpu"), backend))
    for basis in ("identity", "convdct", "dct"):
        torch.library.opcheck(OPS.probe_tangent, (KEY, list(SHAPE), 1, basis, 8, dtype, torch.device("cpu"), backend))


@pytest.mark.parametrize("backend,dtype", CASES, ids=CASE_IDS)
def test_opcheck_dct(backend, dtype):
    x = randn(*SHAPE, dtype=dtype)
    for basis, block in (("convdct", 8), ("convdct", 4), ("dct", 8)):
        torch.library.opcheck(OPS.analysis, (x, basis, block, backend))
        torch.library.opcheck(OPS.synthesis, (x, basis, block, backend))


@pytest.mark.parametrize("backend,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("basis", ["convdct", "identity", "dct"])
def test_opcheck_structured_step(backend, dtype, basis):
    d, x, jv = randn(*SHAPE, seed=1, dtype=dtype), randn(*SHAPE, seed=2, dtype=dtype), randn(2, *SHAPE, seed=3,
                                                                                             dtype=dtype)
    sigmas = library.scalars(3.0, 1.0, 0.6)
    torch.library.opcheck(OPS.structured_step, (d, x, jv, KEY, sigmas, basis, 8, True, 1.0, backend))
    torch.library.opcheck(OPS.structured_step, (d, x, jv, KEY, sigmas, basis, 8, False, None, backend))


LANCZOS_CASES = [(b, d) for b, d in CASES if d in (torch.float32, torch.float64)]


def _krylov_basis(dtype, k=3, b=2, n=40):
    basis = torch.zeros((k, b, n), dtype=dtype)
    basis[0] = torch.nn.functional.normalize(randn(b, n, seed=4, dtype=dtype), dim=1)
    return basis


@pytest.mark.parametrize("backend,dtype", LANCZOS_CASES, ids=[f"{b}-{str(d).split('.')[-1]}" for b, d in LANCZOS_CASES])
def test_opcheck_lanczos(backend, dtype):
    basis = _krylov_basis(dtype)
    aq = randn(2, 40, seed=5, dtype=dtype)
    for j, reorth in ((0, True), (1, False), (2, True)):  # j = 2: the last row, no q_{j+1} to write
        torch.library.opcheck(OPS.lanczos_update, (aq, basis.clone(), j, reorth, backend))
    hs = [randn(2, j + 1, seed=6 + j, dtype=dtype) for j in range(3)]
    betas = [randn(2, seed=9 + j, dtype=dtype).abs() for j in range(2)]
    torch.library.opcheck(OPS.krylov_sqrt_e1, (hs, betas, library.scalars(0.25, 1.5), None, backend))
    torch.library.opcheck(OPS.krylov_sqrt_e1, (hs[:1], [], library.scalars(0.25, 1.5), 1.0, backend))


@pytest.mark.parametrize("backend,dtype", CASES, ids=CASE_IDS)
def test_opcheck_lanczos_synthesis(backend, dtype):
    work = torch.float64 if dtype == torch.float64 else torch.float32
    basis = _krylov_basis(work)
    d, x = randn(2, 40, seed=1, dtype=dtype), randn(2, 40, seed=2, dtype=dtype)
    g, norm = randn(2, 2, seed=3, dtype=work), randn(2, seed=4, dtype=work).abs()
    torch.library.opcheck(OPS.lanczos_synthesis, (d, x, basis, g, norm, library.scalars(2.0, 0.7), backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_registered_ops_equal_the_backend_functions(backend):
    """The registered layer adds a schema, nothing else: same values as calling the backend directly."""
    raw, reg = dispatch.resolve(backend, "cpu"), library.registered(backend)
    d, x, jv = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2), randn(1, *SHAPE, seed=3)
    kw = dict(sample_offset=1, step=4, sigma_t=3.0, sigma_down=1.0, sigma_up=0.6, basis="convdct", block=8)
    assert torch.equal(reg.structured_step(d, x, jv, 42, **kw), raw.structured_step(d, x, jv, 42, **kw))
    pk = dict(sample_offset=1, step=4, index=2, basis="convdct", block=4)
    assert torch.equal(reg.probe_tangent(42, SHAPE, **pk), raw.probe_tangent(42, SHAPE, **pk))
    assert torch.equal(reg.normal(42, SHAPE, sample_offset=5, step=1), raw.normal(42, SHAPE, sample_offset=5, step=1))
    assert torch.equal(reg.analysis(x, "dct", 8), raw.analysis(x, "dct", 8))
    b1, b2 = _krylov_basis(torch.float32), _krylov_basis(torch.float32)
    aq = randn(2, 40, seed=5)
    for got, want in zip(reg.lanczos_update(aq, b1, 0), raw.lanczos_update(aq, b2, 0)):
        assert torch.equal(got, want)
    assert torch.equal(b1, b2)  # the mutation of basis reaches the caller's tensor


def test_an_unavailable_backend_is_refused_inside_the_op():
    """The op resolves its backend through dispatch: a backend that cannot run raises with the reason."""
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run"):
        OPS.analysis(randn(*SHAPE), "convdct", 8, "cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fake_implementations_follow_dynamic_batch_sizes(backend):
    """A compiled call of every op with a symbolic batch size: one graph serves batches 2, 3 and 5, and its
    results equal eager."""
    from torch._dynamo.testing import CompileCounter

    ops = library.registered(backend)

    def step(x, jv, key):
        v = OPS.probe_tangent(key, list(x.shape), 0, "convdct", 8, x.dtype, x.device, backend)
        xi = OPS.philox_normal(key, list(x.shape), 1, x.dtype, x.device, backend)
        out = OPS.structured_step(x + v, x, jv, key, library.scalars(2.0, 1.0, 0.5), "convdct", 8, True, 1.0,
                                  backend)
        return ops.synthesis(ops.analysis(out, "convdct", 8), "convdct", 8) + xi

    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=True)
    for b in (2, 3, 5):
        x, jv = randn(b, 3, 8, 16, seed=b), randn(1, b, 3, 8, 16, seed=b + 1)
        torch.testing.assert_close(compiled(x, jv, KEY), step(x, jv, KEY), rtol=0, atol=0)
    assert counter.frame_count == 1
