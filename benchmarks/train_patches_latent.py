"""Train the shipped ``patches_latent`` model: an autoencoder of the photo patches, then an EDM denoiser of
its latents (a latent diffusion model in miniature, for claim 5 of docs/claims.md).

    pip install scikit-image              # the data: photographs inside its wheel, no download
    python benchmarks/train_patches_latent.py --ae-steps 6000 --steps 6000 --budget-minutes 0
                                          # writes covkernels/models/weights/patches_latent.pt

Data: the ``patches`` testbed's (``train_patches.build_data``: same photographs, same held-out quarter, never
seen here). Stage 1, the autoencoder (:class:`~covkernels.models.patches_latent.PatchAutoencoder`,
``3 x 16 x 16 -> 4 x 8 x 8``): Adam, mean squared reconstruction error with random horizontal flips, a little
Gaussian noise on the latents (``--latent-noise`` times their batch std, so the decoder tolerates the small
errors of sampled latents; Stable Diffusion's KL autoencoder does the same with its posterior noise) and a
small latent L2 penalty; then ``latent_scale`` makes the latents of the first 8192 training patches
unit-variance (one fixed factor, as Stable Diffusion's comes from one batch; these patches are all from the
first photograph, so over all training latents the std is 0.86 and over the held-out ones 0.82). Stage 2, the
denoiser: the ``patches`` EDM recipe and loop (``train_patches.optimise``: Adam, warm-up and cosine decay,
EMA) on the latents of the training patches and of their mirror images (flips happen before encoding; the
loop's own latent flips are off). The JSON log records the autoencoder's held-out reconstruction error and
the ``patches`` metrics of decoded held-out latents (the floor the autoencoder sets), and the denoiser's
held-out EDM loss. Everything random is seeded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script: train_patches is a sibling
import train_patches as base  # noqa: E402

from covkernels.models.patches import to_unit_range  # noqa: E402
from covkernels.models.patches_latent import WEIGHT_FILE, PatchAutoencoder, PatchesLatentDenoiser  # noqa: E402

LOG = os.path.join(base.HERE, "results", "train_patches_latent.json")


def train_autoencoder(args, data: torch.Tensor, val: torch.Tensor, gen: torch.Generator):
    """Stage 1. Returns ``(autoencoder, log)``; the autoencoder frozen, ``latent_scale`` set."""
    ae = PatchAutoencoder(args.ae_width)
    opt = torch.optim.Adam(ae.parameters(), lr=args.ae_lr)
    log, t0 = {"parameters": sum(p.numel() for p in ae.parameters()), "loss": []}, time.time()
    for step in range(args.ae_steps):
        lr = args.ae_lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * step / args.ae_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x = data[torch.randint(0, len(data), (args.batch,), generator=gen)].float()
        mirror = torch.rand(args.batch, generator=gen) < 0.5
        x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
        z = ae.encoder(x)
        noisy = z + args.latent_noise * z.detach().std() * torch.randn(z.shape, generator=gen)
        loss = (ae.decoder(noisy) - x).square().mean() + args.latent_l2 * z.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            value = float(loss.detach())
            log["loss"].append({"step": step + 1, "loss": round(value, 6), "seconds": round(time.time() - t0, 1)})
            print(f"autoencoder step {step + 1:6d}  loss {value:.5f}  {time.time() - t0:.0f} s", flush=True)
    ae.eval().requires_grad_(False)
    with torch.no_grad():
        ae.latent_scale.fill_(1.0 / float(torch.cat([ae.encode(c.float()) for c in data[:8192].split(1024)]).std()))
        rec = ae.decode(ae.encode(val))
    log.update(seconds=round(time.time() - t0, 1), latent_scale=float(ae.latent_scale),
               held_out_mse=float((rec - val).square().mean()),
               held_out_psnr_db=float(10 * torch.log10(4.0 / (rec - val).square().mean())))
    return ae, log


@torch.no_grad()
def latents(ae: PatchAutoencoder, data: torch.Tensor) -> torch.Tensor:
    """Latents (float16) of every training patch and of its mirror image."""
    both = [ae.encode(c.float()) for part in (data, data.flip(-1)) for c in part.split(2048)]
    return torch.cat(both).half()


@torch.no_grad()
def autoencoder_floor(ae: PatchAutoencoder, seeds: int = 5, num: int = 256) -> dict:
    """The ``patches`` metrics of decoded held-out latents against held-out patches (what a perfect latent
    sampler would score), beside the real-vs-real floor, per seed (the evaluation's N and seeds)."""
    from covkernels.eval.scorers import PatchesScorer

    out: dict = {}
    for seed in range(seeds):
        scorer = PatchesScorer(None, num, seed)
        for kind, value in (("reconstructed", scorer(ae.decode(ae.encode(scorer.reference2)))),
                            ("real (floor)", scorer.floor())):
            for metric, v in value.items():
                out.setdefault(kind, {}).setdefault(metric, []).append(round(float(v), 5))
    return {"seeds": seeds, "num": num, "per_seed": out}


def train_denoiser(args, lat: torch.Tensor, val: torch.Tensor, ae: PatchAutoencoder, gen: torch.Generator, save):
    """Stage 2: the ``patches`` EDM loop on latents. Returns ``(ema, log)``."""
    sigma_data = float(lat[:16384].float().std())
    model = PatchesLatentDenoiser(sigma_data, width=args.width, autoencoder=ae)
    val_noise = torch.randn(len(base.VALIDATION_SIGMAS), *val.shape, generator=torch.Generator().manual_seed(1))
    log = {"sigma_data": sigma_data, "parameters": sum(p.numel() for p in model.net.parameters()),
           "loss": [], "checkpoints": []}

    def edm_loss(net, x0):
        noisy, sigma, weight = base.edm_batch(x0, sigma_data, gen)
        return (weight.view(-1, 1, 1, 1) * (net(noisy, sigma) - x0) ** 2).mean()

    return base.optimise(args, model, lat, gen, edm_loss, lambda ema: base.validation_loss(ema, val, val_noise),
                         save, log, flip=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    base.add_training_arguments(p)
    p.add_argument("--ae-steps", type=int, default=6000, help="autoencoder optimiser steps")
    p.add_argument("--ae-width", type=int, default=32)
    p.add_argument("--ae-lr", type=float, default=2e-3)
    p.add_argument("--latent-noise", type=float, default=0.05, help="latent noise in training, x batch std")
    p.add_argument("--latent-l2", type=float, default=1e-4, help="latent L2 penalty")
    p.add_argument("--out", default=base.WEIGHTS, help="folder of the weights file")
    p.add_argument("--log", default=LOG, help="the JSON training log")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    data, reference, data_info = base.build_data(torch.Generator().manual_seed(args.seed))
    val = to_unit_range(reference[:256])
    os.makedirs(args.out, exist_ok=True)
    command = "python benchmarks/train_patches_latent.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "log"))
    ae, ae_log = train_autoencoder(args, data, val, gen)
    ae_log["floor"] = autoencoder_floor(ae)
    print(json.dumps({k: v for k, v in ae_log.items() if k != "loss"}, indent=1), flush=True)
    lat = latents(ae, data)
    val_lat = ae.encode(val)

    def save(model, log):
        torch.save(model.state_dict(), os.path.join(args.out, WEIGHT_FILE))
        info = {"command": command, "torch": torch.__version__, "threads": torch.get_num_threads(),
                "data": data_info, "train_patches": len(data), "train_latents": len(lat),
                "reference_patches": len(reference), "autoencoder": ae_log, "denoiser": log}
        with open(args.log, "w") as f:
            json.dump(info, f, indent=1)

    ema, log = train_denoiser(args, lat, val_lat, ae, gen, save)
    save(ema, log)


if __name__ == "__main__":
    main()
