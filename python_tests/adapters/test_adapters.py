"""Adapters: diffusers UNets as sigma-space denoisers (equal to diffusers' own DDIM loop), k-diffusion table."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import covkernels as ck
from helpers import gen, tiny_unet, scheduler_loop
from covkernels.adapters import k_diffusion as kd

diffusers = pytest.importorskip("diffusers")
from covkernels.adapters.diffusers import DiffusersDenoiser, scheduler_sigmas  # noqa: E402


@pytest.mark.parametrize("float64_schedule", [True, False], ids=["exact", "float32_alphas"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_equals_diffusers_ddim_scheduler(prediction_type, float64_schedule):
    """Same UNet, noise and timesteps: our sigma-space DDIM equals diffusers' DDIMScheduler loop. With the
    scheduler's alphas in float64 the two agree to rounding (the formulas are the same); with diffusers'
    default float32 alphas, to the float32 rounding of its coefficients."""
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    if float64_schedule:
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    n = 6
    noise = torch.randn(2, 3, 16, 16, generator=gen(0), dtype=torch.float64)
    x = scheduler_loop(unet, sched, n, noise, eta=0.0)
    sigmas = scheduler_sigmas(sched, n, dtype=torch.float64)
    model = DiffusersDenoiser(unet, sched)
    ours = ck.sample_ddim(model, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, disable=True)
    tol = 1e-10 if float64_schedule else 2e-5
    torch.testing.assert_close(ours, x, rtol=tol, atol=tol)


def test_sigma_to_timestep_mapping():
    sched = diffusers.DDIMScheduler()
    model = DiffusersDenoiser(torch.nn.Identity(), sched)
    sig = torch.tensor([float(s) for s in scheduler_sigmas(sched, 10)[:-1]], dtype=torch.float64)
    assert model.sigma_to_t(sig).tolist() == sched.timesteps.tolist()
    interp = DiffusersDenoiser(torch.nn.Identity(), sched, timesteps="interpolate")
    torch.testing.assert_close(interp.sigma_to_t(sig), sched.timesteps.float(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("sampler", ["cov_ddim", "lanczos"])
@pytest.mark.parametrize("guided", [False, True])
def test_covariance_samplers_through_the_diffusers_adapter(sampler, guided):
    """A class-conditional diffusers UNet, plain and guided: with the covariance shrunk to nothing (eta 0,
    c_max 1e-9) the sampler's mean path, built on the JVP's primal through the adapter, is DDIM's on the same
    (guided) denoiser; with its defaults the covariance noise is there and no wider than the step allows."""
    from covkernels.guidance import cfg_denoiser
    from covkernels.steps import ancestral_split

    unet = tiny_unet(num_classes=3).float()
    model = DiffusersDenoiser(unet, diffusers.DDIMScheduler(clip_sample=False))
    sigmas = scheduler_sigmas(diffusers.DDIMScheduler(), 4)
    x = torch.randn(2, 3, 16, 16, generator=gen(1)) * (1 + sigmas[0] ** 2).sqrt()
    labels = {"class_labels": torch.tensor([0, 1])}
    guidance = ck.Guidance(2.0, uncond_args={"class_labels": torch.tensor([2, 2])}) if guided else None
    options = {"guidance": guidance, "cov_sigma_max": float("inf")} if guided else {"cov_sigma_max": float("inf")}
    run = ck.get_sampler(sampler)
    no_cov = run(model, x, sigmas, extra_args=labels, disable=True, generator=gen(2), eta=0.0, c_max=1e-9, **options)
    ddim = ck.sample_ddim(cfg_denoiser(model, guidance) if guided else model, x, sigmas, extra_args=labels,
                          disable=True)
    scale = float(ddim.abs().max())
    assert float((no_cov - ddim).abs().max()) <= 1e-4 * scale

    # the defaults: covariance noise, finite, at most the last covariance step's spread at c = 1 plus the
    # noise earlier steps carried (a loose 6-sigma bound on the whole difference: it fails if the noise is
    # unclipped or the wrong scale)
    out = run(model, x, sigmas, extra_args=labels, disable=True, generator=gen(2), **options)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    eta = ck.samplers.spec(sampler).defaults()["eta"]
    spread = sum(math.sqrt(u ** 2 + (float(t) - d) ** 2) for t, s in zip(sigmas[:-2], sigmas[1:-1])
                 for d, u in [ancestral_split(float(t), float(s), eta)])
    gap = float((out - ddim).abs().max())
    assert 0 < gap <= 6 * spread, (gap, spread)


def test_k_diffusion_table_runs_every_name_like_a_direct_call():
    from covkernels.models import get_model

    model = get_model("gaussian", size=8)
    x = torch.randn(2, 3, 8, 8, generator=gen(3)) * 10
    sigmas = ck.karras_sigmas(3, 0.05, 10.0)
    for name, fn in kd.SAMPLERS.items():
        a = kd.get_sampler(f"sample_{name}")(model, x, sigmas, disable=True, generator=gen(4))
        b = fn(model, x, sigmas, disable=True, generator=gen(4))
        assert torch.equal(a, b), name
    assert kd.get_sampler("euler") is ck.sample_ddim and kd.get_sampler("euler_ancestral") is ck.sample_ddpm
    with pytest.raises(ValueError, match="sampler must be one of"):
        kd.get_sampler("no_such_sampler")


@pytest.mark.parametrize("steps", [8, 16])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_dpmpp_2m_equals_diffusers_dpm_solver_multistep(prediction_type, steps):
    """Same UNet, noise and timesteps: our dpmpp_2m equals DPMSolverMultistepScheduler (dpmsolver++, 2nd
    order, midpoint) to the float32 rounding of the scheduler's own sigma table."""
    unet = tiny_unet()
    sched = diffusers.DPMSolverMultistepScheduler(prediction_type=prediction_type)
    noise = torch.randn(2, 3, 16, 16, generator=gen(0), dtype=torch.float64)
    x = scheduler_loop(unet, sched, steps, noise)
    sigmas = scheduler_sigmas(sched, steps, dtype=torch.float64)
    ours = ck.sample_dpmpp_2m(DiffusersDenoiser(unet, sched), noise * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                              disable=True)
    scale = float(x.abs().max())
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5 * scale)


def test_one_call_pipeline_helper():
    unet = tiny_unet(num_classes=3).float()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False))
    from covkernels.adapters.diffusers import sample

    images = sample(pipe, sampler="cov_ddim", num_inference_steps=4, batch_size=2, generator=gen(0),
                    disable=True, extra_args={"class_labels": torch.tensor([0, 1])}, guidance_scale=2.0,
                    uncond_args={"class_labels": torch.tensor([2, 2])})
    assert images.shape == (2, 3, 16, 16) and float(images.min()) >= 0 and float(images.max()) <= 1
    again = sample(pipe, sampler="ddim", num_inference_steps=4, batch_size=2, generator=gen(0), disable=True,
                   extra_args={"class_labels": torch.tensor([0, 1])}, guidance_scale=2.0,
                   uncond_args={"class_labels": torch.tensor([2, 2])})
    assert again.shape == images.shape
    labels = {"extra_args": {"class_labels": torch.tensor([0, 1])}}
    default = sample(pipe, num_inference_steps=4, batch_size=2, generator=gen(0), disable=True, **labels)
    assert torch.equal(default, sample(pipe, sampler="dpmpp_2m", num_inference_steps=4, batch_size=2,
                                       generator=gen(0), disable=True, **labels))  # the host-schedule default


def test_latent_pipelines_warn_once_for_cov_ddim():
    from covkernels.adapters.diffusers import LatentDiffusionWarning, sample

    class FakeVAE:
        config = type("C", (), {"scaling_factor": 0.5})()

        def decode(self, z):
            return type("D", (), {"sample": z[:, :3]})()

    unet = tiny_unet().float()
    pipe = type("LatentPipe", (), {"unet": unet, "scheduler": diffusers.DDIMScheduler(clip_sample=False),
                                   "vae": FakeVAE()})()
    with pytest.warns(LatentDiffusionWarning, match="reported to hurt latent models"):
        sample(pipe, sampler="cov_ddim", num_inference_steps=2, generator=gen(0), disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatentDiffusionWarning)
        sample(pipe, num_inference_steps=2, generator=gen(0), disable=True)  # the default is mean-only


def test_text_conditioned_unet_with_guidance():
    """UNet2DConditionModel: text embeddings through extra_args, the empty prompt's as uncond_args."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=8).eval()
    model = DiffusersDenoiser(unet, diffusers.DDIMScheduler(clip_sample=False))
    sigmas = scheduler_sigmas(diffusers.DDIMScheduler(), 3)
    text, empty = torch.randn(2, 5, 8, generator=gen(1)), torch.zeros(2, 5, 8)
    x = torch.randn(2, 3, 8, 8, generator=gen(2)) * (1 + sigmas[0] ** 2).sqrt()
    for sampler in ("cov_ddim", "lanczos"):
        guidance = ck.Guidance(5.0, uncond_args={"encoder_hidden_states": empty})
        options = {"block": 4} if sampler == "cov_ddim" else {}
        out = ck.get_sampler(sampler)(model, x, sigmas, extra_args={"encoder_hidden_states": text}, disable=True,
                                      generator=gen(3), guidance=guidance, **options)
        assert out.shape == x.shape and bool(torch.isfinite(out).all())


def test_latent_decode_adds_the_vae_shift_factor():
    """SD3 / Flux VAEs: latents = (z - shift) * scale, so decoding adds the shift back (as diffusers does)."""
    from covkernels.adapters.diffusers import sample

    def pipe_with(shift):
        class FakeVAE:
            config = type("C", (), {"scaling_factor": 4.0, "shift_factor": shift})()

            def decode(self, z):
                return type("D", (), {"sample": z[:, :3]})()

        return type("LatentPipe", (), {"unet": tiny_unet().float(), "vae": FakeVAE(),
                                       "scheduler": diffusers.DDIMScheduler(clip_sample=False)})()

    torch.manual_seed(0)
    plain = sample(pipe_with(None), sampler="ddim", num_inference_steps=2, generator=gen(0), disable=True)
    torch.manual_seed(0)
    shifted = sample(pipe_with(0.2), sampler="ddim", num_inference_steps=2, generator=gen(0), disable=True)
    inside = (plain > 0) & (plain < 0.9)  # away from the [0, 1] clamp
    assert bool(inside.any())
    torch.testing.assert_close(shifted[inside], plain[inside] + 0.1)  # + shift / 2 in [0, 1] units
