"""ode_cov's options as value objects (covkernels/samplers/hybrid_options.py): every object gives the same
samples and the same NFE as its flat keyword spelling, validates itself, and may not be mixed with the flat
keywords it replaces; the registry lists the flat spellings as options. Also: the sampler side reaches the
fused ops only through ops.dispatch / ops.api (no backend module imported above ops)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import covkernels as ck
from helpers import gen
from covkernels.ops import dispatch
from covkernels.samplers import At, Auto, Calibrated, CovSteps, Diagonal, End, Lanczos, OdeCovOptions, spec
from covkernels.eval.testbeds import get_testbed

MODEL = get_testbed("gaussian").load()
SIGMAS = ck.get_sigmas("exponential", 6, 0.1, 80.0)


def run(**options) -> torch.Tensor:
    x = 80.0 * torch.randn(3, *MODEL.event_shape, generator=gen(3))
    return ck.sample_ode_cov(MODEL, x, SIGMAS, generator=gen(5), disable=True, jvp="finite_difference", **options)


@pytest.fixture(scope="module")
def spectrum():
    return ck.calibrate_spectrum(MODEL, MODEL.event_shape, [0.3, 1.0, 3.0], num_samples=2, probes=1, steps=4,
                                 generator=gen(9))


PAIRS = [  # (objects, the same in flat keywords)
    ({"covariance": Diagonal("dct", probes=2), "switch": "end"},
     {"covariance": "dct", "probes": 2, "switch_sigma": "end"}),
    ({"covariance": Diagonal("convdct", block=8, stride=4), "switch": 1.0},
     {"covariance": "convdct", "block": 8, "stride": 4, "switch_sigma": 1.0}),
    ({"covariance": Diagonal("identity", channel_average=False), "switch": Auto(0.1)},
     {"covariance": "identity", "channel_average": False, "switch_sigma": "auto", "auto_tolerance": 0.1}),
    ({"covariance": Lanczos(2), "switch": At(1.0)}, {"covariance": "lanczos", "lanczos_steps": 2, "switch_sigma": 1.0}),
    ({"cov_steps": CovSteps(3, sigma_min=0.05, eta=0.5), "switch": 2.0},
     {"cov_steps": 3, "cov_sigma_min": 0.05, "eta": 0.5, "switch_sigma": 2.0}),
    ({"covariance": Diagonal(), "switch": End()}, {"switch_sigma": "end"}),
]


@pytest.mark.parametrize("objects, flat", PAIRS)
def test_objects_sample_and_count_as_their_flat_spelling(objects, flat):
    assert torch.equal(run(**objects), run(**flat))
    for sigmas in (SIGMAS, 6):
        assert ck.nfe_per_sample("ode_cov", sigmas, **objects) == ck.nfe_per_sample("ode_cov", sigmas, **flat)


def test_calibrated_object_is_its_flat_spelling(spectrum):
    objects = {"covariance": Calibrated(spectrum), "switch": "end"}
    flat = {"covariance": "calibrated", "spectrum": spectrum, "switch_sigma": "end"}
    assert torch.equal(run(**objects), run(**flat))
    assert ck.nfe_per_sample("ode_cov", SIGMAS, **objects) == ck.nfe_per_sample("dpmpp_2m", SIGMAS) == 6


def test_each_object_states_its_cost():
    assert Diagonal(probes=3).nfe_per_step() == 4 and Lanczos(5).nfe_per_step() == 6
    assert Calibrated().nfe_per_step() == 1
    opts = OdeCovOptions.resolve(ode="ipndm", ode_options=None, covariance=Lanczos(2), switch=1.0,
                                 cov_steps=CovSteps(2), c_max=1.0)
    s = [80.0, 20.0, 5.0, 1.5, 0.9, 0.3, 0.1, 0.0]
    assert opts.split(s)[0] == [80.0, 20.0, 5.0, 1.5, 0.9]
    assert opts.nfe(s) == 4 + 3 * 2 == ck.nfe_per_sample("ode_cov", s, ode="ipndm", covariance="lanczos",
                                                         lanczos_steps=2, switch_sigma=1.0, cov_steps=2)


@pytest.mark.parametrize("make, error, match", [
    (lambda: Diagonal(probes=0), ValueError, "probes must be an int in"),
    (lambda: Diagonal("nope"), ValueError, "basis must be one of"),
    (lambda: Diagonal("dct", block=4), ValueError, "apply to basis='convdct' only"),
    (lambda: Diagonal("convdct", stride=3), ValueError, "stride must be a positive int dividing block=8"),
    (lambda: Diagonal(channel_average=1), TypeError, "channel_average must be a bool"),
    (lambda: Lanczos(0), ValueError, "lanczos_steps must be an int in"),
    (lambda: Auto(-1.0), ValueError, "auto_tolerance must be a finite number"),
    (lambda: At(0.0), ValueError, "switch_sigma must be a finite number > 0"),
    (lambda: CovSteps(0), ValueError, "cov_steps must be an int in"),
    (lambda: CovSteps(1, eta=0.5), ValueError, "apply to cov_steps > 1"),
    (lambda: CovSteps(2, eta=2.0), ValueError, "eta must be a number in"),
])
def test_objects_validate_themselves(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("options, match", [
    ({"covariance": Diagonal("dct"), "probes": 2}, r"\['probes'\] do not apply"),
    ({"covariance": Lanczos(2), "lanczos_steps": 2}, r"\['lanczos_steps'\] do not apply"),
    ({"switch": Auto(0.1), "auto_tolerance": 0.2}, r"\['auto_tolerance'\] do not apply"),
    ({"cov_steps": CovSteps(2), "eta": 0.5}, r"\['eta'\] do not apply"),
    ({"switch": "end", "switch_sigma": 1.0}, "not both"),
    ({"switch": "later"}, "switch must be 'end', 'auto'"),
    ({"covariance": Diagonal("convdct", stride=4), "switch": "auto"}, r"\['stride'\] do not apply"),
    ({"covariance": Lanczos(), "switch": Auto()}, "needs a diagonal covariance"),
])
def test_objects_and_their_flat_keywords_do_not_mix(options, match):
    with pytest.raises(ValueError, match=match):
        run(**options)


def test_the_registry_lists_the_flat_spellings_and_unknown_options_still_raise():
    s = spec("ode_cov")
    assert all(s.takes(k) for k in ("switch", "switch_sigma", "covariance", "probes", "lanczos_steps", "eta"))
    assert not s.takes("cov_sigma_max") and s.defaults()["probes"] is None and s.defaults()["cov_steps"] == 1
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such'"):
        run(no_such=1)
    with pytest.raises(TypeError, match="takes no option"):
        ck.nfe_per_sample("ode_cov", SIGMAS, no_such=1)


def test_initial_noise_is_the_reference_stream_through_dispatch():
    """``covkernels.sample``'s x_T: the reference backend's STREAM_INIT normals, drawn through dispatch."""
    from covkernels.ops.rng.reference import STREAM_INIT, philox_normal

    x = dispatch.initial_noise(7, (3, 2, 4, 4), sample_offset=5, dtype=torch.float64)
    assert torch.equal(x, philox_normal(7, (3, 2, 4, 4), sample_offset=5, step=0, stream=STREAM_INIT,
                                        dtype=torch.float64))
    assert dispatch.INITIAL_NOISE_BACKEND == "reference"


# Backend modules of the fused ops: only ops/ (dispatch and the ops' own packages) may import them.
BACKEND_MODULES = {f"covkernels.ops.{op}.{impl}" for op in ("rng", "dct", "noise", "lanczos")
                   for impl in ("reference", "triton", "cpp")}
SAMPLER_SIDE = ("samplers", "steps", "adapters", "compiled_steps.py", "sampling.py", "bench.py", "cli_sample.py")


def imported_modules(path: Path, package: list[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out |= {module} | {f"{module}.{a.name}" for a in node.names}
    return out


def test_the_sampler_side_imports_no_backend_module():
    root = Path(ck.__file__).parent
    files = [p for name in SAMPLER_SIDE for p in ((root / name).rglob("*.py") if (root / name).is_dir()
                                                    else [root / name])]
    assert len(files) > 20
    offenders = {}
    for path in files:
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts if path.name == "__init__.py" else parts[:-1]
        hits = imported_modules(path, package) & BACKEND_MODULES
        if hits:
            offenders[str(path.relative_to(root))] = sorted(hits)
    assert offenders == {}
