"""Train the digits CNN that ``dmc eval`` uses for Frechet distance and class stats.

    python scripts/train_classifier.py --epochs 40 --threads 1

Trains on 80% of the ``heldout`` half of scikit-learn's digits (16x16, [-1, 1]), the
half the demo generators never saw, and reports accuracy on the other 20% (split by
``dmc.evaluate.features.classifier_split``). Writes
``dmc/evaluate/weights/digits_classifier.safetensors`` with the test accuracy,
architecture and split seed in its metadata. Takes about a minute on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dmc.evaluate.features import (
    CLASSIFIER_SPLIT_SEED,
    CLASSIFIER_TEST_FRACTION,
    DIGITS_ARCH,
    DIGITS_WEIGHTS,
    build_digits_net,
    classifier_split,
)


def shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts by -1..1 px per image (edge-padded), the only augmentation."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dy, dx = torch.randint(0, 3, (2, n), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.inference_mode():
        acc = (net(x).argmax(1) == y).float().mean().item()
    net.train()
    return acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0, help="init/shuffle seed (not the split seed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(DIGITS_WEIGHTS))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in classifier_split())
    net = build_digits_net()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(xtr) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), args.batch):
            idx = order[i : i + args.batch]
            loss = F.cross_entropy(net(shift(xtr[idx], gen)), ytr[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.3f} test acc {accuracy(net, xte, yte):.4f}")
    test_acc = accuracy(net, xte, yte)
    meta = {
        "arch": DIGITS_ARCH,
        "features": "128-d penultimate Linear output before its ReLU (net[:-2])",
        "test_accuracy": f"{test_acc:.4f}",
        "n_train": str(len(xtr)),
        "n_test": str(len(xte)),
        "data": "sklearn load_digits, dmc.data.digits 'heldout' half, 16x16 in [-1, 1]",
        "split_seed": str(CLASSIFIER_SPLIT_SEED),
        "test_fraction": str(CLASSIFIER_TEST_FRACTION),
        "train_args": json.dumps({k: v for k, v in vars(args).items() if k != "out"}),
    }
    net.eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, args.out, metadata=meta)
    os.chmod(args.out, 0o644)  # safetensors writes 0600
    print(f"test accuracy {test_acc:.4f} ({len(xte)} images), {time.time() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
