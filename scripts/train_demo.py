"""Train a built-in demo model on the ``train`` half of scikit-learn's digits.

    python scripts/train_demo.py --model demo --minutes 18 --threads 1
    python scripts/train_demo.py --model demo-dit --minutes 20 --threads 1
    python scripts/train_demo.py --model mid --minutes 30 --threads 2 --batch 8 --out mid.safetensors

Writes ``dmc/models/weights/<file>`` (EMA weights, config and schedule in the
safetensors metadata) and a sample grid next to it for a look. Never run by CI.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch

from dmc.data.digits import load_digits_rgb, load_digits_split
from dmc.models.builtin import NULL_CLASS, SCHEDULER_CONFIG, TRAINABLE_MODELS, demo_path
from dmc.models.checkpoint import save_model


def build(name: str):
    import diffusers

    spec = TRAINABLE_MODELS[name]
    return getattr(diffusers, spec["class"])(**spec["config"])


def forward(model, x, t, y):
    return model(x, t, class_labels=y, return_dict=False)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(TRAINABLE_MODELS), required=True)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100, help="steps between log lines and checkpoints")
    ap.add_argument("--resume", action="store_true", help="start from the weights at --out (or the shipped ones)")
    ap.add_argument("--out", default=None, help="where to write (default: the shipped weights file)")
    args = ap.parse_args()

    from diffusers import DDPMScheduler

    spec = TRAINABLE_MODELS[args.model]
    if args.out is None and spec["file"] is None:
        ap.error(f"--model {args.model} is not shipped: give --out")
    out = args.out or demo_path(args.model)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = spec.get("data", {})
    if data.get("rgb"):
        images, labels = load_digits_rgb("train", data["size"])
    else:
        images, labels = load_digits_split("train")
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    sched = DDPMScheduler(**SCHEDULER_CONFIG)
    model = build(args.model).train()
    if args.resume:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(out)))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    budget = args.minutes * 60
    start = time.time()
    step, losses = 0, []
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params", flush=True)
    while (elapsed := time.time() - start) < budget:
        frac = elapsed / budget
        warm = min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(0, len(images), (args.batch,))
        x0, y = images[idx], labels[idx].clone()
        if spec["class"] == "UNet2DModel":  # the DiT's label embedding drops labels itself
            y[torch.rand(args.batch) < 0.1] = NULL_CLASS
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,))
        loss = torch.nn.functional.mse_loss(forward(model, sched.add_noise(x0, noise, t), t, y), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            print(f"step {step} {elapsed:.0f}s loss {np.mean(losses[-100:]):.4f}", flush=True)
            save_model(ema, out, SCHEDULER_CONFIG)
    save_model(ema, out, SCHEDULER_CONFIG)
    print(f"done: {step} steps, final loss {np.mean(losses[-100:]):.4f}", flush=True)


if __name__ == "__main__":
    main()
