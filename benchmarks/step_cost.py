"""The non-model part of a covariance step, and the guided step, as ratios to one model forward.

    python benchmarks/step_cost.py [--device cuda] [--batch 64] [--size 64]

Measured side by side in one run, on a random diffusers UNet2DModel (EDM-preconditioned, attention):
* one forward pass of the model;
* the non-model part of one cov_ddim step (probe synthesis + the fused structured-noise step) and of one
  Lanczos iteration + synthesis, per backend (target on an H100: <= 2% of the forward at 64x64, batch 64,
  and >= 10x faster than the reference path);
* one guided cov_ddim step at each of --guided-batches: sequential (uncond forward, then cond JVP with
  forward AD) vs the two-stream overlap vs one batched finite-difference call (target on a GPU: overlap
  <= 0.85x sequential at batch 1-8), reported as ratios in a second table.
"""
from __future__ import annotations

import argparse
import sys

import torch

from common import write_results

from covkernels.bench import environment, median_seconds
from covkernels.guidance import Guidance, GuidedModel
from covkernels.models.unet import random_diffusers_unet
from covkernels.ops import dispatch

# Timing protocol of the committed results: 2 warm-up and 7 timed runs (covkernels.bench defaults: 1, 5).
TIMING = {"warmup": 2, "repeats": 7}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--guided-batches", type=int, nargs="*", default=None,
                   help="batches of the guided-step comparison (default: --batch); e.g. 1 8 64")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shape = (args.batch, 3, args.size, args.size)
    model = random_diffusers_unet(size=args.size, channels=(64, 128, 256), num_classes=10).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    x, d, jv, aq = (torch.randn(shape, generator=g, device=device) for _ in range(4))
    sigma = torch.full((args.batch,), 2.0, device=device)
    labels = torch.zeros(args.batch, dtype=torch.long, device=device)
    with torch.no_grad():
        t_fwd = median_seconds(lambda: model(x, sigma, class_labels=labels), device, **TIMING)
    rows = {"forward_s": t_fwd}
    backends = ["reference"] + (["triton"] if device.type == "cuda" else
                                ["cpp"] if dispatch.backend_status()["cpp"][0] else [])
    for name in backends:
        ops = dispatch.resolve(name, device)

        def cov_step():
            ops.probe_tangent(1, shape, sample_offset=0, step=0, basis="convdct", block=8, device=device)
            ops.structured_step(d, x, jv[None], 1, sample_offset=0, step=0, sigma_t=2.0, sigma_down=1.0,
                                sigma_up=0.5, basis="convdct", block=8)

        basis = torch.nn.functional.normalize(torch.randn((3,) + shape, device=device).flatten(2), dim=2).view(
            (3,) + shape)

        def lanczos_iter():
            ops.lanczos_update(aq, basis, 1)
            ops.lanczos_synthesis(d, x, basis, torch.ones(args.batch, 2, device=device),
                                  torch.ones(args.batch, device=device), sigma_t=2.0, sigma_down=1.0)

        rows[f"cov_ddim_non_model_{name}_s"] = median_seconds(cov_step, device, **TIMING)
        rows[f"lanczos_iteration_{name}_s"] = median_seconds(lanczos_iter, device, **TIMING)
    ratios = {}
    for b in args.guided_batches or [args.batch]:
        gx = torch.randn((b,) + shape[1:], generator=g, device=device)
        gv = torch.randn((b,) + shape[1:], generator=g, device=device)
        gs, gl = torch.full((b,), 2.0, device=device), torch.zeros(b, dtype=torch.long, device=device)
        for label, concurrent, strategy in (("sequential", False, "forward_ad"), ("two_stream", True, "forward_ad"),
                                            ("batched_fd", True, "finite_difference")):
            # two_stream: the compiled executor when covkernels._C has its CUDA part, else the Python one;
            # batched_fd: one model call on [x, x + h v, x] (cond, cond, uncond)
            pair = GuidedModel(model, {"class_labels": gl},
                               Guidance(3.0, uncond_args={"class_labels": gl + 1}, concurrent=concurrent))
            rows[f"guided_step_b{b}_{label}_s"] = median_seconds(lambda: pair.jvp(gx, gs, gv, strategy), device,
                                                                 **TIMING)
        ratios[f"guided step b={b}: two-stream / sequential"] = (rows[f"guided_step_b{b}_two_stream_s"]
                                                                 / rows[f"guided_step_b{b}_sequential_s"])
        ratios[f"guided step b={b}: batched FD / sequential"] = (rows[f"guided_step_b{b}_batched_fd_s"]
                                                                 / rows[f"guided_step_b{b}_sequential_s"])
    lines = ["| quantity | value | ratio to one forward |", "|---|---|---|"]
    for key, val in rows.items():
        lines.append(f"| {key[:-2]} | {val * 1e3:.3f} ms | {val / t_fwd:.3f} |")
    lines += ["", "| ratio (same run) | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    table = "\n".join(lines)
    name = args.name or f"step_cost_{device.type}"
    cmd = "python benchmarks/step_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_results(name, {"environment": environment(device), "shape": list(shape), "seconds": rows,
                                "ratios": ratios,
                                "jvp_strategy": "forward_ad (guided step)"}, table, cmd.strip())
    print(table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
