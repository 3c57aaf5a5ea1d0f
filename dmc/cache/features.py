"""Record cache-point features on the FP (uncached) trajectory for the schedule search and the
correction fit (DeepCache/CacheQuant: ``algorithms.md`` §5.2 step 1; BAC: §6.2 step 1).

The trajectory is ``ctx.torch_pipeline()`` — the runtime's own sampler loop over the current
(uncached) graphs — from a small seeded batch, with forward hooks on the cache points. Features
are indexed by model call k (0 = noisiest). Under guidance the sample axis holds the doubled
batch [uncond; cond], as the network sees it.
"""

from __future__ import annotations

import numpy as np
import torch

from dmc.errors import DmcError


def _record(ctx, modules: list[torch.nn.Module], num_samples: int, seed: int,
            pick=lambda out: out) -> np.ndarray:
    """``[K, len(modules), S, ...]`` float32: each module's output at every model call."""
    num_calls = len(ctx.calls)
    current: list[list[np.ndarray]] = [[] for _ in modules]
    per_call: list[list[np.ndarray]] = []

    def hook_for(i):
        def hook(_module, _inputs, output):
            current[i].append(pick(output).detach().float().cpu().numpy().copy())
        return hook

    def on_call(k, feeds, raw, x_next):
        if any(len(c) != 1 for c in current):
            raise DmcError(f"cache feature recording: call {k} ran the hooked modules "
                           f"{[len(c) for c in current]} times (expected once each)")
        per_call.append([c.pop() for c in current])

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        ctx.torch_pipeline().sample(num_samples, seed=seed, batch_size=num_samples, on_call=on_call)
    finally:
        for h in handles:
            h.remove()
    if len(per_call) != num_calls:
        raise DmcError(f"cache feature recording saw {len(per_call)} calls, expected {num_calls}")
    return np.stack([np.stack(row) for row in per_call])


def record_unet_features(ctx, branch: int, num_samples: int, seed: int) -> np.ndarray:
    """DeepCache cache point (output of ``up_blocks[-2-branch]``) per call: ``[K, S, C, H, W]``."""
    from dmc.cache.deepcache import cache_point

    feats = _record(ctx, [cache_point(ctx.adapter.model, branch)], num_samples, seed)[:, 0]
    expected = num_samples * (2 if ctx.recipe.guided else 1)
    if feats.shape[1] != expected:  # one cache per guidance half: the doubled batch is cached as is
        raise DmcError(f"cache feature batch {feats.shape[1]} != {expected} (guidance halves must be kept)")
    return feats


def record_dit_features(ctx, num_samples: int, seed: int) -> tuple[np.ndarray, list[str], list[int]]:
    """DiT branch outputs (pre-gate attention / MLP of every block) per call, with the branch
    labels in depth order and the FFN indices: the layout ``dit_blocks`` caches by
    (``[K, 2L, S, tokens, hidden]``, ``["b0.attn", "b0.mlp", ...]``, ``[1, 3, ...]``). The hooks sit
    on each block's ``attn1`` and ``ff``, whose outputs are exactly what the cached graphs store."""
    from dmc.cache import dit_blocks

    labels, ffn = dit_blocks.dit_branch_layout(ctx)
    blocks = dit_blocks._transformer(ctx).transformer_blocks
    feats = _record(ctx, [m for b in blocks for m in (b.attn1, b.ff)], num_samples, seed)
    return feats, labels, ffn
