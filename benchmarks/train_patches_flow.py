"""Train ``patches_flow``: the natural-image patches testbed retrained as a JiT-style x-prediction rectified flow.

    pip install scikit-image
    python benchmarks/train_patches_flow.py --budget-minutes 90   # writes covkernels/models/weights/patches_flow_net.pt

Data, held-out split and budget flags are ``benchmarks/train_patches.py``'s (imported, not restated): 3 x 16
x 16 patches of five scikit-image photographs in [-1, 1], the right-most quarter of every photograph held
out; the held-out reference set is the same as ``patches_heldout.pt`` (same split, same seed), so it is not
written again.

Model: the same UNet backbone (``PatchUNet``) as a network ``net(z, t) -> x0`` with JiT's conventions
(``z = t x0 + (1 - t) eps``: t = 0 is noise), trained with JiT's recipe: x-prediction with the velocity
loss ``|(x_pred - z) / (1 - t) - (x0 - z) / (1 - t)|^2`` (the divisor clamped at ``T_EPS``), t logit-normal
(``--p-mean``, ``--p-std``; JiT's -0.8, 0.8 put little weight near clean data: t > 0.9, i.e. sigma < 0.11,
has probability 9e-5, and a 300-step smoke run's held-out loss is worst at sigma 0.05). In covkernels it is
``FlowDenoiser(net, "x0", noise_at=0)`` (``covkernels.adapters.flow``). Adam with warm-up and cosine decay
over ``--steps`` or ``--budget-minutes`` (whichever ends first; the decay follows the larger progress
fraction), EMA weights shipped. Every
``--checkpoint-minutes`` the EMA weights and the JSON log are rewritten with the held-out denoising loss
through the adapter at the EDM model's validation sigmas (EDM-weighted, so the two testbeds' numbers are
comparable). Everything random is seeded.
"""
from __future__ import annotations

import argparse
import os
import sys
import json

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script: train_patches is a sibling
import train_patches as base  # noqa: E402

from covkernels.adapters.flow import FlowDenoiser  # noqa: E402
from covkernels.models.patches import to_unit_range  # noqa: E402
from covkernels.models.patches_flow import WEIGHT_FILE, PatchesFlowNet  # noqa: E402

LOG = os.path.join(base.HERE, "results", "train_patches_flow.json")
P_MEAN, P_STD, T_EPS = -0.8, 0.8, 0.05  # JiT's logit-normal time (the defaults of --p-mean/--p-std), its clamp


def flow_batch(x0: torch.Tensor, gen: torch.Generator, p_mean: float = P_MEAN, p_std: float = P_STD):
    """``(z, t, eps)``: logit-normal ``t`` (JiT's) and ``z = t x0 + (1 - t) eps``."""
    t = torch.sigmoid(torch.randn(x0.shape[0], generator=gen) * p_std + p_mean)
    eps = torch.randn(x0.shape, generator=gen)
    return t.view(-1, 1, 1, 1) * x0 + (1 - t.view(-1, 1, 1, 1)) * eps, t, eps


def velocity_loss(net, x0: torch.Tensor, gen: torch.Generator, p_mean: float = P_MEAN,
                  p_std: float = P_STD) -> torch.Tensor:
    z, t, _ = flow_batch(x0, gen, p_mean, p_std)
    gap = (1 - t).clamp_min(T_EPS).view(-1, 1, 1, 1)
    return (((net(z, t) - z) / gap - (x0 - z) / gap) ** 2).mean()


@torch.no_grad()
def validation_loss(net, x0: torch.Tensor, noise: torch.Tensor, sigma_data: float) -> dict[str, float]:
    """EDM-weighted denoising loss per fixed sigma on the held-out patches, through the flow adapter."""
    model = FlowDenoiser(net, "x0", noise_at=0)
    out = {}
    for i, s in enumerate(base.VALIDATION_SIGMAS):
        err = (model(x0 + s * noise[i], torch.full((x0.shape[0],), s)) - x0).square().mean()
        out[str(s)] = round(float(err) * (s ** 2 + sigma_data ** 2) / (s * sigma_data) ** 2, 5)
    return out


def train(args, data: torch.Tensor, val: torch.Tensor, save):
    """The EDM model's loop (``train_patches.optimise``: same optimiser, schedule, flips, EMA, budget) with
    the flow loss."""
    gen = torch.Generator().manual_seed(args.seed)
    sigma_data = float(data.float().std())
    net = PatchesFlowNet(args.width)
    val_noise = torch.randn(len(base.VALIDATION_SIGMAS), *val.shape, generator=torch.Generator().manual_seed(1))
    log = {"sigma_data": sigma_data, "parameters": sum(p.numel() for p in net.parameters()), "loss": [],
           "checkpoints": [], "recipe": {"p_mean": args.p_mean, "p_std": args.p_std, "t_eps": T_EPS}}
    return base.optimise(args, net, data, gen, lambda model, x0: velocity_loss(model, x0, gen, args.p_mean, args.p_std),
                         lambda ema: validation_loss(ema, val, val_noise, sigma_data), save, log)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    base.add_training_arguments(p)
    p.add_argument("--p-mean", type=float, default=P_MEAN, help="logit-normal mean of t (JiT: -0.8, noisy side)")
    p.add_argument("--p-std", type=float, default=P_STD, help="logit-normal std of t")
    p.add_argument("--out", default=base.WEIGHTS, help="folder of the weights file")
    p.add_argument("--log", default=LOG, help="the JSON training log")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data, reference, data_info = base.build_data(torch.Generator().manual_seed(args.seed))
    os.makedirs(args.out, exist_ok=True)
    val = to_unit_range(reference[:256])
    command = "python benchmarks/train_patches_flow.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "log"))

    def save(net, log):
        config = {"width": net.width, "prediction": "x0", "noise_at": 0, "noise_scale": 1.0, "time_scale": 1.0}
        torch.save({"config": config, "state_dict": net.state_dict()}, os.path.join(args.out, WEIGHT_FILE))
        info = {"command": command, "torch": torch.__version__, "threads": torch.get_num_threads(),
                "budget_minutes": args.budget_minutes, "data": data_info, "train_patches": len(data),
                "reference_patches": len(reference), "flow_model": log}
        with open(args.log, "w") as f:
            json.dump(info, f, indent=1)

    ema, log = train(args, data, val, save)
    save(ema, log)


if __name__ == "__main__":
    main()
