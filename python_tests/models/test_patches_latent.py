"""The ``patches_latent`` testbed: a latent diffusion model of the photo patches (autoencoder + latent EDM
denoiser) shipped with the package; samples are latents, decoded before scoring and before images are written."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from helpers import ROOT, gen, run_cli

from covkernels.eval import testbeds
from covkernels.eval.scorers import LatentPatchesScorer, PatchesScorer
from covkernels.eval.user_model import UserModel
from covkernels.models import get_model
from covkernels.models.patches import reference_patches

LOG = os.path.join(ROOT, "benchmarks", "results", "train_patches_latent.json")
VALIDATION = 256  # train_patches_latent.py validates on the latents of the first 256 held-out patches


def _log() -> dict:
    with open(LOG) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def model():
    return get_model("patches_latent")


def test_registered_with_the_patches_metrics():
    assert "patches_latent" in testbeds.testbed_names()
    latent, pixel = testbeds.get_testbed("patches_latent"), testbeds.get_testbed("patches")
    assert latent.metrics == pixel.metrics and latent.main_metric == "fd_features"
    with pytest.raises(ValueError, match="4 x 8 x 8"):
        get_model("patches_latent", size=16)


def test_latents_are_unit_scale_and_decode_to_the_patches(model):
    assert model.event_shape == (4, 8, 8) and not model.training
    x = reference_patches()[:VALIDATION]
    z = model.encode(x)
    assert z.shape == (VALIDATION, 4, 8, 8)
    assert 0.75 < float(z.std()) < 0.9  # latent_scale: unit variance on one photograph's patches; 0.82 held out
    mse = float((model.decode(z) - x).square().mean())
    assert mse == pytest.approx(_log()["autoencoder"]["held_out_mse"], rel=1e-4)
    assert mse < 0.05 * float(x.var())  # the autoencoder keeps > 95% of the held-out variance


def test_the_shipped_weights_are_the_logged_ones(model):
    """The trainer's validation (EDM-weighted held-out loss on the latents of the first 256 held-out patches,
    noise seed 1) run on the shipped denoiser equals the log's last checkpoint (rounded to 5 decimals)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_patches as base

    logged = _log()["denoiser"]["checkpoints"][-1]["held_out_loss"]
    val = model.encode(reference_patches()[:VALIDATION])
    noise = torch.randn(len(logged), *val.shape, generator=torch.Generator().manual_seed(1))
    got = base.validation_loss(model, val, noise)
    assert got.keys() == logged.keys()
    for s, want in logged.items():
        assert got[s] == pytest.approx(want, abs=2e-5), f"sigma {s}"


def test_scorer_decodes_then_scores_like_patches(model):
    scorer, pixels = LatentPatchesScorer(model, 64, 3), PatchesScorer(None, 64, 3)
    z = model.encode(pixels.reference2)
    assert scorer(z) == pixels(model.decode(z))
    assert scorer.floor() == pixels.floor()
    with pytest.raises(ValueError, match="latents"):
        scorer(pixels.reference2)
    with pytest.raises(TypeError, match="decode"):
        LatentPatchesScorer(get_model("gaussian", size=16), 64, 0)


@pytest.mark.parametrize("model_arg", ["patches_latent", "covkernels.models.patches_latent:patches_latent_denoiser"],
                         ids=["testbed", "factory"])
def test_export_writes_decoded_images(tmp_path, model_arg):
    import numpy as np

    code, _, err = run_cli(["sample", "--model", model_arg, "--sampler", "ddim", "--steps", "3", "--num", "2",
                            "--out-dir", str(tmp_path / "out"), "--format", "npz", "--quiet"], tmp_path)
    assert code == 0, err
    assert np.load(tmp_path / "out" / "samples.npz")["arr_0"].shape == (2, 16, 16, 3)


def test_decode_moves_latents_to_the_model_and_images_back():
    moved = get_model("patches_latent").to("meta")  # a stand-in for a GPU: the model elsewhere than the latents
    seen = []

    def fake_decode(c):  # the meta autoencoder cannot compute: record where its input is, answer on the CPU
        seen.append(c.device.type)
        return torch.zeros(c.shape[0], 3, 16, 16)

    moved.autoencoder.decode = fake_decode
    assert moved.decode(torch.zeros(2, 4, 8, 8)).device.type == "cpu" and seen == ["meta"]


def test_user_model_decode():
    user = UserModel(lambda x, s: x, (4, 8, 8), decode=lambda z: z[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert user.images(torch.zeros(2, 4, 8, 8)).shape == (2, 3, 16, 16)
    assert UserModel(lambda x, s: x, (3, 8, 8)).images(torch.ones(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    with pytest.raises(TypeError, match="decode"):
        UserModel(lambda x, s: x, (4, 8, 8), decode="vae")
    with pytest.raises(ValueError, match="decode must return images"):
        UserModel(lambda x, s: x, (4, 8, 8), decode=lambda z: z).images(torch.zeros(2, 4, 8, 8))


def test_cli_writes_decoded_images(tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    code, _, err = run_cli(["sample", "--model", "patches_latent", "--sampler", "ddim", "--steps", "3", "--num", "4",
                            "--num-eval", "0", "--scale", "1", "--out", str(out), "--quiet"], tmp_path)
    assert code == 0, err
    img = Image.open(out)
    # a 2 x 2 grid of decoded 3 x 16 x 16 images (plus padding), not of 4-channel 8 x 8 latents
    assert img.mode == "RGB" and min(img.size) >= 2 * 16
    code, _, err = run_cli(["sample", "--model", "patches_latent", "--reference", str(tmp_path), "--num", "2",
                            "--quiet"], tmp_path)
    assert code != 0 and "latent model" in err


def test_a_latent_sample_decodes_to_finite_images(model):
    from covkernels import sample

    z = sample(model, (4, 4, 8, 8), "ddim", steps=4, generator=gen(0), disable=True)
    x = model.decode(z)
    assert x.shape == (4, 3, 16, 16) and bool(torch.isfinite(x).all())
