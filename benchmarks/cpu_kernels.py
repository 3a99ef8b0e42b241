"""Compiled CPU kernels (covkernels._C) vs the pure-PyTorch reference, side by side in one run.

    python benchmarks/cpu_kernels.py [--batches 1 8] [--sizes 64 256] [--repeats 15]

For B x 3 x S x S float32 images, the non-model part of:
* a ``cov_ddim`` step: probe tangent + the fused structured-noise step (convdct 8x8, the default basis;
  and the global DCT basis);
* a Lanczos iteration: one reorthogonalised update (j = 1 of k = 3), given J q_j;
* a whole ``lanczos`` step with k = 3: the step's Gaussian draw, q_1, three updates, the k x k square root
  and the synthesis (the three J q_j are fixed tensors: the model is not timed).
Target (issue #5): compiled >= 3x faster than the reference at 64^2 and 256^2. The two backends run
alternately, repeat after repeat, so both see the same machine state; the ratio is of the medians.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from common import write_results

from covkernels.bench import environment
from covkernels.ops import dispatch


def cases(ops, shape):
    g = torch.Generator().manual_seed(0)
    d, x, jv = (torch.randn(shape, generator=g) for _ in range(3))
    aqs = [torch.randn(shape, generator=g) for _ in range(3)]
    k = 3
    basis = torch.nn.functional.normalize(torch.randn((k,) + shape, generator=g).flatten(2), dim=2).view((k,) + shape)

    def cov_step(basis_name):
        def run():
            ops.probe_tangent(1, shape, sample_offset=0, step=0, basis=basis_name, block=8)
            ops.structured_step(d, x, jv[None], 1, sample_offset=0, step=0, sigma_t=2.0, sigma_down=1.0,
                                sigma_up=0.5, basis=basis_name, block=8)
        return run

    def lanczos_step():
        xi = ops.normal(1, shape, sample_offset=0, step=0)
        xi_norm = xi.flatten(1).norm(dim=1)
        q = torch.zeros((k,) + shape)
        q[0] = xi / xi_norm.view(-1, 1, 1, 1)
        hs, betas = [], []
        for j in range(k):
            h, beta = ops.lanczos_update(aqs[j], q, j)
            hs.append(h)
            betas.append(beta)
        g_vec = ops.krylov_sqrt_e1(hs, betas, shift=0.25, scale=1.0)
        ops.lanczos_synthesis(d, x, q, g_vec, xi_norm, sigma_t=2.0, sigma_down=1.0)

    return {"cov_ddim non-model (convdct 8)": cov_step("convdct"), "cov_ddim non-model (dct)": cov_step("dct"),
            "lanczos iteration (update)": lambda: ops.lanczos_update(aqs[1], basis, 1),
            "lanczos step non-model (k=3)": lanczos_step}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    backends = {name: dispatch.resolve(name, "cpu") for name in ("reference", "cpp")}
    rows = []
    for b in args.batches:
        for s in args.sizes:
            shape = (b, 3, s, s)
            runs = {name: cases(ops, shape) for name, ops in backends.items()}
            for case in runs["cpp"]:
                times = {name: [] for name in backends}
                for name in backends:  # warm-up
                    runs[name][case]()
                for _ in range(args.repeats):
                    for name in backends:
                        start = time.perf_counter()
                        runs[name][case]()
                        times[name].append(time.perf_counter() - start)
                med = {name: statistics.median(t) for name, t in times.items()}
                rows.append({"case": case, "shape": list(shape), "reference_s": med["reference"], "cpp_s": med["cpp"],
                             "speedup": med["reference"] / med["cpp"]})
                print(f"{case:<32} {str(shape):<18} reference {med['reference'] * 1e3:8.2f} ms  "
                      f"cpp {med['cpp'] * 1e3:8.2f} ms  {med['reference'] / med['cpp']:5.1f}x", flush=True)
    lines = ["| non-model part | shape | reference | compiled (cpp) | speedup |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['reference_s'] * 1e3:.2f} ms | "
                     f"{r['cpp_s'] * 1e3:.2f} ms | {r['speedup']:.1f}x |")
    table = "\n".join(lines)
    cmd = "python benchmarks/cpu_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_results("cpu_kernels", {"environment": environment(torch.device("cpu")), "rows": rows,
                                         "threads": torch.get_num_threads()}, table, cmd.strip())
    print(table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
