"""Train the shipped ``digits`` model: an EDM denoiser (DigitsUNet) and the feature classifier.

    pip install scikit-learn            # the data: its built-in 8x8 digits, no download
    python benchmarks/train_digits.py   # ~25 min on one CPU core; writes covkernels/models/weights/*.pt

Data: the 1797 images of ``sklearn.datasets.load_digits``, bilinearly upsampled to 16 x 16, scaled to [-1, 1].
Denoiser: EDM training (log-normal sigma, P_mean = -1.2, P_std = 1.2, the EDM loss weight), Adam with warm-up
and cosine decay, EMA of the weights (the EMA is shipped). Classifier: 80/20 split, the held-out accuracy is
logged; its 128-d penultimate features of all 1797 images are stored as the reference set of the metrics.
Everything is seeded; the log goes to benchmarks/results/train_digits.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

import torch

from covkernels.models.digits import DigitsClassifier, DigitsDenoiser

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "..", "covkernels", "models", "weights")


def load_digits_16() -> tuple[torch.Tensor, torch.Tensor]:
    """``(1797, 1, 16, 16)`` images in [-1, 1] and ``(1797,)`` labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1), torch.tensor(d.target, dtype=torch.long)


def train_classifier(x, y, epochs: int, gen: torch.Generator) -> tuple[DigitsClassifier, dict]:
    perm = torch.randperm(len(x), generator=gen)
    n_train = int(0.8 * len(x))
    tr, te = perm[:n_train], perm[n_train:]
    model = DigitsClassifier(len(x))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(n_train, generator=gen).split(64):
            b = tr[idx]
            # light pixel noise: generated digits are never exactly on the data, features should not care
            xb = x[b] + 0.05 * torch.randn(x[b].shape, generator=gen)
            loss = torch.nn.functional.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[te]).argmax(1) == y[te]).float().mean())
        model.reference_features.copy_(model.features(x).half())
    return model, {"held_out_accuracy": acc, "train": n_train, "held_out": len(te), "epochs": epochs}


def train_denoiser(x, steps: int, batch: int, gen: torch.Generator) -> tuple[DigitsDenoiser, dict]:
    sigma_data = float(x.std())
    model = DigitsDenoiser(sigma_data)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    warmup, log, t0 = 200, [], time.time()
    for step in range(steps):
        lr = 2e-3 * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x0 = x[torch.randint(0, len(x), (batch,), generator=gen)]
        sigma = (torch.randn(batch, generator=gen) * 1.2 - 1.2).exp()
        weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
        noisy = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
        loss = (weight.view(-1, 1, 1, 1) * (model(noisy, sigma) - x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            log.append({"step": step, "loss": float(loss.detach()), "seconds": round(time.time() - t0, 1)})
            print(f"step {step:5d}  loss {float(loss.detach()):.4f}  {time.time() - t0:.0f} s", flush=True)
    return ema.eval(), {"sigma_data": sigma_data, "steps": steps, "batch": batch, "log": log,
                        "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--classifier-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=WEIGHTS)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x, y = load_digits_16()
    os.makedirs(args.out, exist_ok=True)
    clf, clf_log = train_classifier(x, y, args.classifier_epochs, gen)
    print(f"classifier held-out accuracy {clf_log['held_out_accuracy']:.4f}", flush=True)
    torch.save(clf.state_dict(), os.path.join(args.out, "digits_classifier.pt"))
    den, den_log = train_denoiser(x, args.steps, args.batch, gen)
    torch.save(den.state_dict(), os.path.join(args.out, "digits_unet.pt"))
    info = {"command": "python benchmarks/train_digits.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "classifier": clf_log, "denoiser": den_log}
    with open(os.path.join(HERE, "results", "train_digits.json"), "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
