"""Every documented bad input raises a clear error that names the argument."""
from __future__ import annotations

import pytest
import torch

import covkernels as ck
from covkernels.ops import dispatch
from helpers import gen
from covkernels.models import get_model

MODEL = get_model("gaussian", size=8)
X = torch.randn(2, 3, 8, 8, generator=gen(0)) * 10
SIGMAS = ck.karras_sigmas(3, 0.01, 10.0)


def call(name="cov_ddim", model=MODEL, x=X, sigmas=SIGMAS, **options):
    return ck.get_sampler(name)(model, x, sigmas, disable=True, generator=gen(1), **options)


@pytest.mark.parametrize("sigmas,match", [
    ([10.0, 10.0, 0.0], "strictly decreasing"),
    ([1.0, 2.0, 0.0], "strictly decreasing"),
    ([10.0, float("nan"), 0.0], "finite and non-negative"),
    ([10.0, -1.0], "finite and non-negative"),
    ([10.0], "at least 2 values"),
])
@pytest.mark.parametrize("name", ck.SAMPLERS)
def test_bad_sigmas(name, sigmas, match):
    with pytest.raises(ValueError, match=f"sigmas must .*{match}|sigmas must be {match}"):
        call(name, sigmas=torch.tensor(sigmas))


def test_bad_x():
    with pytest.raises(TypeError, match="x must be a floating-point"):
        call(x=X.to(torch.int64))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        call(x=X.tolist())
    with pytest.raises(ValueError, match="x must have shape"):
        call("ddim", x=torch.zeros(3))


def test_basis_must_tile_the_image():
    with pytest.raises(ValueError, match="block=8 does not tile x of spatial size 12x8"):
        call(model=lambda x, s: x, x=torch.zeros(1, 1, 12, 8), block=8)
    with pytest.raises(ValueError, match="basis must be one of"):
        call(basis="wavelet")
    with pytest.raises(ValueError, match=r"needs images x of shape \(B, C, H, W\)"):
        call(model=lambda x, s: x, x=torch.zeros(2, 16), basis="dct")


@pytest.mark.parametrize("name,option,value,match", [
    ("cov_ddim", "eta", 1.5, "eta must be a number in"),
    ("lanczos", "eta", -0.1, "eta must be a number in"),
    ("cov_ddim", "c_max", 0.0, "c_max must be a positive finite number"),
    ("lanczos", "lanczos_steps", 0, "lanczos_steps must be an int in"),
    ("diag_hutchinson", "probes", 2.5, "probes must be an int in"),
    ("cov_ddim", "jvp", "magic", "jvp must be one of"),
    ("cov_ddim", "backend", "opencl", "backend must be one of"),
    ("cov_ddim", "sample_offset", -1, "sample_offset must be a non-negative int"),
    ("noisy_ddim", "sigma_data", 0.0, "sigma_data must be a finite number > 0"),
    ("addim", "sigma_data", -1.0, "sigma_data must be a finite number > 0"),
])
def test_bad_options(name, option, value, match):
    with pytest.raises(ValueError, match=match):
        call(name, **{option: value})


def test_unknown_option_and_sampler():
    with pytest.raises(TypeError, match="lanczos_step"):
        call("lanczos", lanczos_step=3)  # typo of lanczos_steps is not silently ignored
    with pytest.raises(ValueError, match="sampler must be one of"):
        ck.get_sampler("euler_a")
    with pytest.raises(ValueError, match="sampler must be one of"):
        ck.sample(MODEL, (1, 3, 8, 8), sampler="plms", disable=True)


def test_unavailable_backend_says_why():
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run: "):
        call(backend="cuda")  # CPU tensors; and no CUDA op kernels exist (Triton is the GPU path)
    with pytest.raises(RuntimeError, match="backend='cpp' cannot run: "):
        dispatch.resolve("cpp", "meta")


def test_generator_type():
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        ck.sample_ddim(MODEL, X, SIGMAS, disable=True, generator=0)


def test_model_output_checks():
    with pytest.raises(ValueError, match=r"model returned shape \(2, 3, 4, 4\)"):
        call("ddim", model=lambda x, s: x[..., :4, :4])
    with pytest.raises(TypeError, match="model returned dtype torch.float64"):
        call("ddim", model=lambda x, s: x.double())
    with pytest.raises(TypeError, match="model must return a tensor"):
        call("ddim", model=lambda x, s: None)
    with pytest.raises(TypeError, match="model must be callable"):
        call("ddim", model="unet")


@pytest.mark.parametrize("name", ck.SAMPLERS)
def test_nan_from_the_model_names_step_and_sigma(name):
    def model(x, sigma):
        out = MODEL(x, sigma)
        return out * float("nan") if float(sigma[0]) < 5 else out

    step = 0 if name == "heun" else 1  # heun's corrector evaluates sigma_1 inside step 0
    with pytest.raises(ck.NonFiniteError, match=rf"model returned NaN/Inf \(.*\) at step {step}, sigma=0\.7177"):
        call(name, model=model, **({"jvp": "finite_difference"} if name in ("cov_ddim", "lanczos",
                                                                             "diag_hutchinson") else {}))


def test_schedule_errors():
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ck.karras_sigmas(0, 0.1, 10)
    with pytest.raises(ValueError, match="sigma_min must be a positive"):
        ck.karras_sigmas(4, 0.0, 10)
    with pytest.raises(ValueError, match="sigma_max must be finite and greater"):
        ck.exponential_sigmas(4, 1.0, 0.5)
    with pytest.raises(ValueError, match="schedule must be one of"):
        ck.get_sigmas("sqrt_linear", 4, 0.1, 10)
    with pytest.raises(ValueError, match="spacing must be"):
        ck.linear_beta_sigmas(4, spacing="middle")
    with pytest.raises(ValueError, match="shape must be"):
        ck.sample(MODEL, (3, 8, 8, 0), disable=True)


def test_more_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="x must be finite"):
        call("ddim", x=X * float("nan"))
    with pytest.raises(TypeError, match="channel_average must be a bool"):
        call(channel_average="no")
    with pytest.raises(ValueError, match="channel_average=True needs images"):
        call(model=lambda x, s: x, x=torch.zeros(2, 16), basis="identity")
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        ck.sample(MODEL, (1, 3, 8, 8), dtype=torch.int32, disable=True)
    with pytest.raises(ValueError, match="s_churn must be a finite number >= 0"):
        call("heun", s_churn=-1.0)
    with pytest.raises(ValueError, match="model returned a tensor on meta"):
        call("ddim", model=lambda x, s: torch.empty_like(x, device="meta"))
