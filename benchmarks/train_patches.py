"""Train the shipped ``patches`` model: an EDM denoiser of 3 x 16 x 16 RGB patches of photographs.

    pip install scikit-image              # the data: photographs inside its wheel, no download
    python benchmarks/train_patches.py --budget-minutes 90   # writes covkernels/models/weights/patches_*.pt

Data: astronaut, chelsea, coffee, rocket and the left motorcycle view of ``skimage.data``, averaged down
2 x 2 (then rounded to 8 bits), in [-1, 1]. The right-most quarter of each photograph is held out; the
training set is every 16 x 16 patch of the other three quarters at stride 2 (about 52k), with random
horizontal flips. 4096 held-out patches (stride 1 positions, seeded choice, uint8) are written to
``patches_heldout.pt`` as the metrics' reference set.

Training: EDM (log-normal sigma, P_mean = -1.2, P_std = 1.2, the EDM loss weight), Adam with warm-up and a
cosine decay over ``--steps`` or ``--budget-minutes``, whichever ends first (the decay follows the larger of
the two progress fractions, so a budgeted run still anneals), EMA of the weights (the EMA is shipped). Every
``--checkpoint-minutes`` the EMA weights and ``benchmarks/results/train_patches.json`` are rewritten, with
the held-out EDM loss at fixed sigmas and fixed noise. Everything random is seeded; only the step at which
a budgeted run stops depends on the machine's speed (the JSON records it; pass ``--steps`` alone for a run
that is reproducible step for step).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

import torch

from covkernels.models.patches import PatchesDenoiser, to_unit_range

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "..", "covkernels", "models", "weights")
LOG = os.path.join(HERE, "results", "train_patches.json")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")
PATCH, HELD_OUT_FRACTION, REFERENCE_COUNT = 16, 0.25, 4096
VALIDATION_SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)


def load_photos() -> dict[str, torch.Tensor]:
    """``name -> (3, H/2, W/2)`` uint8: each photograph averaged over 2 x 2 blocks, rounded."""
    from skimage import data

    out = {}
    for name in PHOTOS:
        img = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
        x = torch.as_tensor(img).permute(2, 0, 1).to(torch.float64).unsqueeze(0)
        out[name] = torch.nn.functional.avg_pool2d(x, 2)[0].round().clamp(0, 255).to(torch.uint8)
    return out


def split_photo(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(training part, held-out part): the held-out part is the right-most quarter of the columns."""
    cut = img.shape[-1] - round(HELD_OUT_FRACTION * img.shape[-1])
    return img[..., :cut], img[..., cut:]


def all_patches(img: torch.Tensor, stride: int) -> torch.Tensor:
    """Every ``16 x 16`` patch of ``img (3, H, W)`` at ``stride``: ``(N, 3, 16, 16)``, same dtype."""
    p = img.unfold(1, PATCH, stride).unfold(2, PATCH, stride)  # (3, nh, nw, 16, 16)
    return p.permute(1, 2, 0, 3, 4).reshape(-1, img.shape[0], PATCH, PATCH)


def build_data(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Training patches (float16 in [-1, 1]), reference patches (uint8), and a description for the log."""
    photos = load_photos()
    train, held, info = [], [], {}
    for name, img in photos.items():
        tr, ho = split_photo(img)
        train.append(all_patches(tr, 2))
        held.append(all_patches(ho, 1))
        info[name] = {"size": list(img.shape), "train_patches": train[-1].shape[0],
                      "held_out_positions": held[-1].shape[0]}
    held = torch.cat(held)
    reference = held[torch.randperm(held.shape[0], generator=gen)[:REFERENCE_COUNT]].clone()
    return to_unit_range(torch.cat(train)).half(), reference, info


def edm_batch(x0: torch.Tensor, sigma_data: float, gen: torch.Generator):
    """EDM training tuple (noisy, sigma, weight) for clean ``x0 (B, C, H, W)``."""
    sigma = (torch.randn(x0.shape[0], generator=gen) * 1.2 - 1.2).exp()
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    return x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen), sigma, weight


@torch.no_grad()
def validation_loss(model, x0: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
    """Mean EDM-weighted denoising loss per fixed sigma on the held-out patches (fixed noise)."""
    out = {}
    for i, s in enumerate(VALIDATION_SIGMAS):
        sig = torch.full((x0.shape[0],), s)
        err = (model(x0 + s * noise[i], sig) - x0).square().mean()
        out[str(s)] = round(float(err) * (s ** 2 + model.sigma_data ** 2) / (s * model.sigma_data) ** 2, 5)
    return out


def learning_rate(args, step: int, elapsed: float, budget: float) -> float:
    """Warm-up over 200 steps, then a cosine decay over the larger of the step and the time fractions."""
    progress = max(step / args.steps, elapsed / budget)
    return args.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def optimise(args, model, data: torch.Tensor, gen: torch.Generator, batch_loss, validate, save, log: dict,
             flip: bool = True):
    """The training loop the patch models share (so the flow retraining gets the EDM model's exact budget):
    Adam, :func:`learning_rate`, random horizontal flips (``flip``; off for latents, whose mirror image is not
    the latent of the mirrored patch), EMA of the weights, a loss line every 100 steps and the held-out
    ``validate(ema)`` with ``save(ema, log)`` every ``--checkpoint-minutes``, until ``--steps`` or
    ``--budget-minutes``. ``batch_loss(model, x0)`` draws its noise from ``gen``. Returns ``(ema, log)``."""
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    budget = args.budget_minutes * 60.0 if args.budget_minutes else math.inf
    t0 = last_ckpt = time.time()
    step = 0
    while step < args.steps and time.time() - t0 < budget:
        lr = learning_rate(args, step, time.time() - t0, budget)
        for group in opt.param_groups:
            group["lr"] = lr
        x0 = data[torch.randint(0, len(data), (args.batch,), generator=gen)].float()
        mirror = torch.rand(args.batch, generator=gen) < 0.5  # drawn either way: the stream does not depend on flip
        loss = batch_loss(model, torch.where(mirror.view(-1, 1, 1, 1), x0.flip(-1), x0) if flip else x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        if step % 100 == 0 or step == args.steps:
            log["loss"].append({"step": step, "loss": round(float(loss.detach()), 5),
                                "seconds": round(time.time() - t0, 1), "lr": lr})
            print(f"step {step:6d}  loss {float(loss.detach()):.4f}  {time.time() - t0:.0f} s", flush=True)
        if time.time() - last_ckpt >= args.checkpoint_minutes * 60:
            last_ckpt = time.time()
            log["checkpoints"].append({"step": step, "seconds": round(last_ckpt - t0, 1),
                                       "held_out_loss": validate(ema.eval())})
            save(ema, dict(log, steps_done=step, seconds=round(time.time() - t0, 1), finished=False))
    log["checkpoints"].append({"step": step, "seconds": round(time.time() - t0, 1),
                               "held_out_loss": validate(ema.eval())})
    return ema, dict(log, steps_done=step, seconds=round(time.time() - t0, 1), finished=True)


def train(args, data: torch.Tensor, val: torch.Tensor, save) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    sigma_data = float(data.float().std())
    model = PatchesDenoiser(sigma_data, width=args.width)
    val_noise = torch.randn(len(VALIDATION_SIGMAS), *val.shape, generator=torch.Generator().manual_seed(1))
    log = {"sigma_data": sigma_data, "parameters": sum(p.numel() for p in model.parameters()),
           "loss": [], "checkpoints": []}

    def edm_loss(net, x0):
        noisy, sigma, weight = edm_batch(x0, sigma_data, gen)
        return (weight.view(-1, 1, 1, 1) * (net(noisy, sigma) - x0) ** 2).mean()

    return optimise(args, model, data, gen, edm_loss, lambda ema: validation_loss(ema, val, val_noise), save, log)


def blur3(x: torch.Tensor) -> torch.Tensor:
    """The [1 2 1]^2 / 16 binomial blur per channel (replicated edges)."""
    k = torch.tensor([1.0, 2.0, 1.0])
    w = (k[:, None] * k[None] / 16).expand(x.shape[1], 1, 3, 3).contiguous()
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), w, groups=x.shape[1])


def check_metrics(seeds: int = 5, num: int = 1024) -> dict:
    """Do the patches metrics rank known-bad samples worse? Per seed: the scorer's second real set (the
    floor) against blurred / noised copies of that same set; mean and 95% t-interval over seeds."""
    from covkernels.eval.scorers import PatchesScorer as make_scorer
    from covkernels.eval.testbeds import PATCHES_METRICS as METRICS

    rows: dict = {}
    for seed in range(seeds):
        scorer = make_scorer(None, num, seed)
        real, gen = scorer.reference2, torch.Generator().manual_seed(seed)
        cases = {"real (floor)": real, "blur [1 2 1]^2": blur3(real),
                 "noise 0.05": real + 0.05 * torch.randn(real.shape, generator=gen),
                 "noise 0.1": real + 0.1 * torch.randn(real.shape, generator=gen),
                 "contrast x0.9": real * 0.9}
        for case, x in cases.items():
            for metric, value in scorer(x).items():
                rows.setdefault(case, {}).setdefault(metric, []).append(value)
    t975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}[seeds]
    out = {}
    for case, metrics in rows.items():
        out[case] = {}
        for metric, values in metrics.items():
            v = torch.tensor(values, dtype=torch.float64)
            half = t975 * float(v.std()) / math.sqrt(len(values))
            out[case][metric] = {"mean": float(v.mean()), "ci95": [float(v.mean()) - half, float(v.mean()) + half]}
    return {"seeds": seeds, "num": num, "metrics": list(METRICS), "cases": out}


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The training budget and optimiser flags, shared with train_patches_flow.py (the same budget)."""
    p.add_argument("--steps", type=int, default=20000, help="maximum optimiser steps")
    p.add_argument("--budget-minutes", type=float, default=90.0, help="wall-clock budget (0: none)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(p)
    p.add_argument("--out", default=WEIGHTS)
    p.add_argument("--check-metrics", action="store_true",
                   help="only rank corrupted held-out patches with the metrics; adds 'metric_check' to the JSON log")
    args = p.parse_args()
    if args.check_metrics:
        with open(LOG) as f:
            info = json.load(f)
        info["metric_check"] = check_metrics()
        with open(LOG, "w") as f:
            json.dump(info, f, indent=1)
        print(json.dumps(info["metric_check"]["cases"], indent=1))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data, reference, data_info = build_data(torch.Generator().manual_seed(args.seed))
    os.makedirs(args.out, exist_ok=True)
    torch.save({"patches": reference}, os.path.join(args.out, "patches_heldout.pt"))
    val = to_unit_range(reference[:256])
    command = "python benchmarks/train_patches.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "check_metrics"))

    def save(model, log):
        torch.save(model.state_dict(), os.path.join(args.out, "patches_unet.pt"))
        info = {"command": command, "torch": torch.__version__, "threads": torch.get_num_threads(),
                "budget_minutes": args.budget_minutes, "data": data_info, "train_patches": len(data),
                "reference_patches": len(reference), "denoiser": log}
        with open(LOG, "w") as f:
            json.dump(info, f, indent=1)

    ema, log = train(args, data, val, save)
    save(ema, log)


if __name__ == "__main__":
    main()
