"""diffusers rectified-flow schedulers and transformers through the adapter: covkernels' ddim / dpmpp_2m / unipc
reproduce FlowMatchEulerDiscreteScheduler / DPMSolverMultistepScheduler / UniPCMultistepScheduler (flow sigmas)
on seeded random-init models; clip_sample and the covariance window say what they do."""
from __future__ import annotations

import warnings

import pytest
import torch

import covkernels as ck
from helpers import gen, tiny_unet

diffusers = pytest.importorskip("diffusers")
from covkernels.adapters.diffusers import (ClipSampleWarning, CovarianceWindowWarning, DiffusersDenoiser,  # noqa: E402
                                           LatentDiffusionWarning, sample, scheduler_sigmas)
from covkernels.adapters.flow import dynamic_shift_mu, sample_flow  # noqa: E402


def tiny_dit():
    torch.manual_seed(0)
    return diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=3,
                                           out_channels=3, num_layers=2, sample_size=16, patch_size=4,
                                           num_embeds_ada_norm=10, norm_num_groups=1).eval()


def tiny_pixart():
    torch.manual_seed(0)
    return diffusers.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=3,
                                              out_channels=3, num_layers=2, sample_size=16, patch_size=4,
                                              cross_attention_dim=16, caption_channels=8, norm_num_groups=1).eval()


NETS = {
    "dit": (tiny_dit, lambda b: {"class_labels": torch.arange(b) % 10}),
    "pixart": (tiny_pixart, lambda b: {"encoder_hidden_states": torch.randn(b, 5, 8, generator=gen(9)),
                                       "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}),
    "unet": (lambda: tiny_unet().float(), lambda b: {}),
}


def diffusers_loop(net, sched, noise, extra, steps, **set_kw):
    sched.set_timesteps(steps, **set_kw)
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            out = net(x, timestep=t.expand(x.shape[0]), **extra).sample
            x = sched.step(out, t, x).prev_sample
    return x


def assert_parity(ours, ref):
    scale = float(ref.abs().max())
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-6 * scale)  # measured: <= 4.3e-7 * scale


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("shift", [1.0, 3.0], ids=["no_shift", "shift3"])
def test_ddim_reproduces_flow_match_euler(net_name, shift):
    """Starts at s = 1 (sigma = inf): the adapter's closed-form first step, then covkernels' ddim."""
    make, extra_of = NETS[net_name]
    net, extra = make(), extra_of(2)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    noise = torch.randn(2, 3, 16, 16, generator=gen(0))
    ref = diffusers_loop(net, sched, noise, extra, 6)
    sigmas = scheduler_sigmas(sched, 6, dtype=torch.float64)
    assert sigmas[0] == float("inf")
    with torch.no_grad():
        ours = sample_flow(DiffusersDenoiser(net, sched), "ddim", sigmas, noise=noise, extra_args=extra,
                           disable=True)
    assert_parity(ours, ref)


def test_ddim_reproduces_flow_match_euler_with_dynamic_shift():
    net, extra = tiny_dit(), NETS["dit"][1](2)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    mu = dynamic_shift_mu(16)
    noise = torch.randn(2, 3, 16, 16, generator=gen(1))
    ref = diffusers_loop(net, sched, noise, extra, 5, mu=mu)
    with torch.no_grad():
        ours = sample_flow(DiffusersDenoiser(net, sched), "ddim", scheduler_sigmas(sched, 5, mu=mu), noise=noise,
                           extra_args=extra, disable=True)
    assert_parity(ours, ref)
    with pytest.raises(ValueError, match="pass mu"):
        scheduler_sigmas(sched, 5)


MULTISTEP = [
    pytest.param("dpmpp_2m", lambda **kw: diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", **kw), id="dpmpp_2m"),
    pytest.param("unipc", lambda **kw: diffusers.UniPCMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", final_sigmas_type="zero", **kw), id="unipc"),
]


@pytest.mark.parametrize("net_name", ["dit", "unet"])
@pytest.mark.parametrize("flow_shift", [1.0, 3.0], ids=["no_shift", "shift3"])
@pytest.mark.parametrize("sampler,make_sched", MULTISTEP)
def test_multistep_reproduces_diffusers_with_flow_sigmas(sampler, make_sched, net_name, flow_shift):
    """Flow sigmas start below 1 (0.999, UniPC 1 - 1e-6); the model gets the scheduler's own (integer)
    timesteps; the host's noise is pure noise at that first time (x_0 = (1 + sigma_0) eps)."""
    make, extra_of = NETS[net_name]
    net, extra = make(), extra_of(2)
    noise = torch.randn(2, 3, 16, 16, generator=gen(2))
    steps = 8
    ref = diffusers_loop(net, make_sched(flow_shift=flow_shift), noise, extra, steps)
    sched = make_sched(flow_shift=flow_shift)
    sigmas = scheduler_sigmas(sched, steps, dtype=torch.float64)
    options = {"order": sched.config.solver_order} if sampler == "unipc" else {}  # diffusers' default order 2
    with torch.no_grad():
        ours = sample_flow(DiffusersDenoiser(net, sched), sampler, sigmas, noise=noise, extra_args=extra,
                           disable=True, **options)
    assert_parity(ours, ref)


def test_one_call_helper_runs_a_transformer_pipeline_with_guidance_interval():
    net = tiny_dit()
    pipe = type("FlowPipe", (), {"transformer": net, "scheduler": diffusers.FlowMatchEulerDiscreteScheduler()})()
    labels = {"class_labels": torch.tensor([1, 2])}

    def kw():  # a fresh generator per call: the same noise
        return dict(num_inference_steps=4, batch_size=2, generator=gen(0), disable=True, extra_args=labels)

    plain = sample(pipe, sampler="ddim", **kw())
    assert plain.shape == (2, 3, 16, 16) and 0 <= float(plain.min()) and float(plain.max()) <= 1
    null = {"class_labels": torch.tensor([0, 0])}
    guided = sample(pipe, sampler="ddim", guidance_scale=3.0, uncond_args=null, **kw())
    assert float((guided - plain).abs().max()) > 1e-3
    # an interval that no step reaches is the conditional model, exactly
    empty = sample(pipe, sampler="ddim", guidance_scale=3.0, uncond_args=null, guidance_interval=(1e5, 1e6),
                   **kw())
    torch.testing.assert_close(empty, plain, rtol=0, atol=1e-6)
    out = sample(pipe, sampler="cov_ddim", guidance_scale=3.0, uncond_args=null, guidance_interval=(0.1, 10.0),
                 **kw())
    assert bool(torch.isfinite(out).all())


def test_guidance_interval_switches_per_step():
    """Inside the interval the guided prediction, outside it the conditional one (JiT's recipe)."""
    labels, null = {"class_labels": torch.tensor([1])}, {"class_labels": torch.tensor([0])}
    model = DiffusersDenoiser(tiny_dit(), diffusers.FlowMatchEulerDiscreteScheduler())
    x = torch.randn(1, 3, 16, 16, generator=gen(3))
    g = ck.Guidance(2.0, uncond_args=null, interval=(0.5, 2.0))
    guided = ck.cfg_denoiser(model, g)
    with torch.no_grad():
        for sigma, inside in ((1.0, True), (4.0, False)):
            s = torch.tensor([sigma])
            d_c, d_u = model(x, s, **labels), model(x, s, **null)
            want = d_u + 2.0 * (d_c - d_u) if inside else d_c
            torch.testing.assert_close(guided(x, s, **labels), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="guidance interval"):
        ck.Guidance(2.0, interval=(2.0, 1.0))


def test_clip_sample_warns_and_matches_diffusers_clipped_output_rule():
    """DDPMScheduler defaults to clip_sample=True: the adapter warns, naming the switch; its ddim equals
    diffusers' DDIM with use_clipped_model_output=True, and with clip_sample=False the default loop."""
    unet = tiny_unet()
    config = diffusers.DDPMScheduler().config
    noise = torch.randn(2, 3, 16, 16, generator=gen(0), dtype=torch.float64)
    for clip, use_clipped in ((True, True), (False, False)):
        sched = diffusers.DDIMScheduler.from_config(config, clip_sample=clip)
        sched.set_timesteps(6)
        x = noise.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=use_clipped).prev_sample
        sigmas = scheduler_sigmas(sched, 6, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = DiffusersDenoiser(unet, sched)
        assert any(issubclass(w.category, ClipSampleWarning) and "clip_sample=False" in str(w.message)
                   for w in caught) == clip
        ours = ck.sample_ddim(model, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, disable=True)
        torch.testing.assert_close(ours, x, rtol=2e-5, atol=2e-5)
    pipe = diffusers.DDPMPipeline(unet=unet.float(), scheduler=diffusers.DDPMScheduler())
    with pytest.warns(ClipSampleWarning, match="use_clipped_model_output=True"):
        sample(pipe, sampler="ddim", num_inference_steps=3, generator=gen(0), disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClipSampleWarning)
        sample(pipe, sampler="ddim", num_inference_steps=3, generator=gen(0), disable=True, clip_sample=False)


def test_covariance_window_on_ddpm_leading_steps_warns_and_scales_with_the_data_range():
    """DDPM's 10 leading-spaced steps: the default window cov_sigma_max = 1 covers 2 of 9 steps; the adapter
    says so; a model whose data lie in [-2, 2] gets the window 2; an explicit window is kept silently."""
    from covkernels.adapters.guards import covariance_window
    from covkernels.samplers import spec

    sched = diffusers.DDPMScheduler(clip_sample=False, timestep_spacing="leading")
    sigmas = scheduler_sigmas(sched, 10)
    assert sum(0 < float(u) and float(t) <= 1 for t, u in zip(sigmas[:-1], sigmas[1:])) == 2
    with pytest.warns(CovarianceWindowWarning, match="covers 2 of the 9 steps"):
        opts = covariance_window(spec("cov_ddim"), sigmas, {})
    assert opts == {"cov_sigma_max": 1.0}
    with pytest.warns(CovarianceWindowWarning):
        assert covariance_window(spec("lanczos"), sigmas, {}, data_range=(-2, 2)) == {"cov_sigma_max": 2.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CovarianceWindowWarning)
        assert covariance_window(spec("cov_ddim"), sigmas, {"cov_sigma_max": 5.0}) == {"cov_sigma_max": 5.0}
        assert covariance_window(spec("ddim"), sigmas, {}) == {}
    pipe = diffusers.DDPMPipeline(unet=tiny_unet().float(), scheduler=sched)
    with pytest.warns(CovarianceWindowWarning, match="covers 2 of the 9"):
        sample(pipe, sampler="cov_ddim", num_inference_steps=10, generator=gen(0), disable=True)


def test_latent_guard_on_many_channels():
    net = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16,
                                          out_channels=16, num_layers=1, sample_size=8, patch_size=2,
                                          num_embeds_ada_norm=10, norm_num_groups=1).eval()
    pipe = type("LatentFlow", (), {"transformer": net, "scheduler": diffusers.FlowMatchEulerDiscreteScheduler()})()
    kw = dict(num_inference_steps=2, generator=gen(0), disable=True, extra_args={"class_labels": torch.tensor([1])})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample(pipe, sampler="cov_ddim", **kw)
    latent = [w for w in caught if issubclass(w.category, LatentDiffusionWarning)]
    assert len(latent) == 1 and "16 channels" in str(latent[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatentDiffusionWarning)
        sample(pipe, sampler="ddim", **kw)


def tiny_patch_dit(size: int):
    torch.manual_seed(0)
    return diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=3,
                                           out_channels=3, num_layers=2, sample_size=size, patch_size=16,
                                           num_embeds_ada_norm=10, norm_num_groups=1).eval()


@pytest.mark.parametrize("size,batch", [pytest.param(256, 2, id="256x256-b2"), pytest.param(512, 1, id="512x512-b1")])
@pytest.mark.parametrize("sampler,options", [
    pytest.param("cov_ddim", {"block": 16}, id="cov_ddim-block_is_patch"),
    pytest.param("cov_ddim", {"basis": "dct"}, id="cov_ddim-global_dct"),
    pytest.param("lanczos", {"lanczos_steps": 2}, id="lanczos"),
])
def test_covariance_samplers_at_full_resolution(size, batch, sampler, options):
    """A patch-16 DiT at 256 x 256 and 512 x 512 (CPU, 4 flow-Euler steps, covariance on every step): the
    block DCT at the input's size, block = the transformer's patch size. ~0.1-1.3 s a run on one core."""
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    model = DiffusersDenoiser(tiny_patch_dit(size), sched)
    with torch.no_grad():
        ref = sample_flow(model, "ddim", scheduler_sigmas(sched, 4), shape=(batch, 3, size, size), generator=gen(0),
                          extra_args={"class_labels": torch.arange(batch)}, disable=True)
    out = sample_flow(model, sampler, scheduler_sigmas(sched, 4), shape=(batch, 3, size, size), generator=gen(0),
                      extra_args={"class_labels": torch.arange(batch)}, disable=True, jvp="finite_difference",
                      cov_sigma_max=float("inf"), **options)
    assert out.shape == (batch, 3, size, size) and bool(torch.isfinite(out).all())
    # the covariance noise is on the order of the data, not of the pixels' noise: it moves the sample
    assert 1e-3 < float((out - ref).pow(2).mean().sqrt()) < 10 * float(ref.pow(2).mean().sqrt())


def test_a_block_that_does_not_tile_the_image_is_refused_naming_both_sizes():
    """The ConvDCT's blocks must tile H x W: a padded block would not be orthonormal on the valid pixels, so
    the noise it synthesises there would not have the covariance it estimated; refused, not padded."""
    sched = diffusers.FlowMatchEulerDiscreteScheduler()
    model = DiffusersDenoiser(tiny_unet().float(), sched)  # a UNet as a flow model, at a non-square size
    kw = dict(shape=(1, 3, 24, 40), generator=gen(0), disable=True, cov_sigma_max=float("inf"),
              jvp="finite_difference")
    with pytest.raises(ValueError, match=r"block=16 does not tile x of spatial size 24x40"):
        sample_flow(model, "cov_ddim", scheduler_sigmas(sched, 3), block=16, **kw)
    out = sample_flow(model, "cov_ddim", scheduler_sigmas(sched, 3), block=8, **kw)  # 8 tiles 24 x 40
    assert bool(torch.isfinite(out).all())


def test_learned_variance_output_uses_its_first_half():
    """ADM / DiT learned variance: the model returns 2C channels (epsilon, variance); the epsilon half is used."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=6, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    sched = diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False)
    model = DiffusersDenoiser(unet, sched)
    x, sigma = torch.randn(2, 3, 16, 16, generator=gen(5)), torch.tensor([2.0, 2.0])
    with torch.no_grad():
        eps = unet(x / 5 ** 0.5, model.sigma_to_t(sigma)).sample[:, :3]
        torch.testing.assert_close(model(x, sigma), x - 2.0 * eps, rtol=1e-5, atol=1e-5)
