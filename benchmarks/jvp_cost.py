"""Cost of one JVP per strategy, as a ratio to one forward pass of the same model and batch.

Model: a randomly initialised diffusers UNet2DModel with attention (EDM-preconditioned), at 32x32 and
64x64. For every strategy the timed call returns ``(D(x), J v)`` from scratch (fresh primal), which is
what a cov_ddim step needs; ``finite_difference (primal reused)`` is the cost of each further Lanczos
JVP. Targets (issue #3): finite difference <= 1.1 extra forward; forward AD within 2.5 forwards.

    python benchmarks/jvp_cost.py [--device cuda] [--batch 4] [--sizes 32 64]
"""
from __future__ import annotations

import argparse
import sys

import torch

from common import write_results

from covkernels.bench import environment, median_seconds
from covkernels import jvp as jvp_engine
from covkernels.models.unet import random_diffusers_unet

# Timing protocol of the committed results: 2 warm-up and 7 timed runs (covkernels.bench defaults: 1, 5).
TIMING = {"warmup": 2, "repeats": 7}
STRATEGIES = ("forward_ad", "double_vjp", "finite_difference", "central_difference")


def measure(size: int, batch: int, device: torch.device, channels) -> dict:
    model = random_diffusers_unet(size=size, channels=channels).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen, device=device) * 2
    v = torch.randn(batch, 3, size, size, generator=gen, device=device)
    sigma = torch.full((batch,), 2.0, device=device)
    with torch.no_grad():
        primal = model(x, sigma)
        t_fwd = median_seconds(lambda: model(x, sigma), device, **TIMING)
    row = {"size": size, "batch": batch, "forward_s": t_fwd, "ratio_to_forward": {}}
    for name in STRATEGIES:
        t = median_seconds(lambda: jvp_engine.jvp(model, x, sigma, v, strategy=name), device, **TIMING)
        row["ratio_to_forward"][name] = t / t_fwd
    t = median_seconds(lambda: jvp_engine.jvp(model, x, sigma, v, strategy="finite_difference", primal=primal),
                       device, **TIMING)
    row["ratio_to_forward"]["finite_difference (primal reused)"] = t / t_fwd
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--name", default=None, help="results file stem (default jvp_cost_<device type>)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = [measure(s, args.batch, device, tuple(args.channels)) for s in args.sizes]
    names = list(rows[0]["ratio_to_forward"])
    table = "| image | batch | forward | " + " | ".join(names) + " |\n|" + "---|" * (3 + len(names)) + "\n"
    for r in rows:
        table += (f"| {r['size']}x{r['size']} | {r['batch']} | {r['forward_s'] * 1e3:.1f} ms | "
                  + " | ".join(f"{r['ratio_to_forward'][n]:.2f}x" for n in names) + " |\n")
    fd = max(r["ratio_to_forward"]["finite_difference"] - 1 for r in rows)
    fwd = max(r["ratio_to_forward"]["forward_ad"] for r in rows)
    targets = {"finite_difference_extra_forwards": {"target": 1.1, "measured": fd, "met": fd <= 1.1},
               "forward_ad_forwards": {"target": 2.5, "measured": fwd, "met": fwd <= 2.5}}
    table += (f"\nJVP cost in forward passes, each with its fresh primal (so 1.0x would be free). Targets: finite "
              f"difference <= 1.1 extra forward: {'met' if targets['finite_difference_extra_forwards']['met'] else 'NOT met'}"
              f" ({fd:.2f}); forward AD <= 2.5 forwards: {'met' if targets['forward_ad_forwards']['met'] else 'NOT met'}"
              f" ({fwd:.2f}).")
    name = args.name or f"jvp_cost_{device.type}"
    cmd = "python benchmarks/jvp_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_results(name, {"environment": environment(device), "channels": args.channels, "rows": rows,
                                "targets": targets}, table, cmd.strip())
    print(table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
