"""Learning the masks end to end through the unrolled sampler (EcoDiff, ``algorithms.md`` §3.4-3.6).

Loss per batch: ``||x0(masked) - x0(unpruned)||² / var(x0)`` on the final sample of the whole
K-call sampler (same initial noise, labels and guidance as the teacher), plus an augmented
Lagrangian sparsity term ``μ·v + ρ·v²``, ``v = ratio - E[removed] / total`` (parameters, or MACs
per call), whose multiplier μ rises by dual ascent while the expected removal is short of the
target and falls once it is met, so the masks settle near the requested ratio. Gradients come from the per-step checkpointed sampler
(``dmc.learn.unrolled``); the hard-concrete noise is drawn once per call and replayed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from dmc.learn.unrolled import UnrolledSampler, conditions
from dmc.prune.masks import MaskSet
from dmc.sampling.calls import initial_noise


@dataclass
class TrainOptions:
    iterations: int = 60
    samples: int = 16  # fixed pool of (noise, label) pairs, like EcoDiff's ~100 prompts
    batch: int = 2
    lr: float = 0.1  # Adam on the logits (EcoDiff's attn/ff lr)
    dual_lr: float = 0.5  # ascent rate of the sparsity multiplier
    rho: float = 10.0  # quadratic (augmented Lagrangian) term: damps the multiplier's overshoot
    delta: float = 0.5  # hard-concrete noise shrink (EcoDiff's masking_eps for SDXL)
    seed: int = 0


def _take(d: dict, idx) -> dict:
    return {k: v[idx] for k, v in d.items()}


def learn_masks(adapter, masks: MaskSet, calls, guidance, sample_shape, total: float, ratio: float,
                opts: TrainOptions) -> dict:
    """Train ``masks.log_alpha`` in place; returns a training log for the manifest."""
    started = time.time()
    torch.manual_seed(opts.seed)
    sampler = UnrolledSampler(lambda x, t, **c: adapter(x, t, **c), calls, guidance)
    x_all = torch.from_numpy(initial_noise(opts.seed, opts.samples, tuple(sample_shape)))
    cond_all, uncond_all = conditions(adapter, opts.samples)
    masks.mode = "off"
    with torch.no_grad():
        target = torch.cat([sampler.sample(x_all[i:i + opts.batch], _take(cond_all, slice(i, i + opts.batch)),
                                           _take(uncond_all, slice(i, i + opts.batch)))
                            for i in range(0, opts.samples, opts.batch)])
    scale = float(target.var()) or 1.0
    masks.mode = "sample"
    optim = torch.optim.Adam(masks.log_alpha.parameters(), lr=opts.lr)
    mu = 0.0
    rng = np.random.default_rng(opts.seed)
    order = []
    log = {"recon": [], "removed_expected": [], "mu": []}
    for it in range(opts.iterations):
        if len(order) < opts.batch:
            order += list(rng.permutation(opts.samples))
        idx, order = torch.tensor(order[:opts.batch]), order[opts.batch:]
        optim.zero_grad()
        tgt = target[idx]
        recon, _ = sampler.backward(x_all[idx], lambda y: (y - tgt).square().mean() / scale,
                                    _take(cond_all, idx), _take(uncond_all, idx), masks)
        removed = masks.expected_removed() / total
        shortfall = ratio - removed
        (mu * shortfall + opts.rho * shortfall.square()).backward()
        optim.step()
        mu = max(0.0, mu + opts.dual_lr * shortfall.item())
        log["recon"].append(round(float(recon), 6))
        log["removed_expected"].append(round(removed.item(), 4))
        log["mu"].append(round(mu, 4))
    masks.u = None
    return {"iterations": opts.iterations, "samples": opts.samples, "batch": opts.batch, "lr": opts.lr,
            "dual_lr": opts.dual_lr, "rho": opts.rho, "delta": opts.delta, "seed": opts.seed, "calls": len(calls),
            "seconds": round(time.time() - started, 1),
            "recon_first": log["recon"][0] if log["recon"] else None,
            "recon_last": float(np.mean(log["recon"][-5:])) if log["recon"] else None,
            "removed_expected_last": log["removed_expected"][-1] if log["removed_expected"] else None,
            "curve": log}
