"""BAC's home ground: per-sub-block caching of Diffusion Policy's transformer (DP-T).

Every decoder layer ``i`` of ``dmc.policies.transformer1d`` has three residual sub-blocks,
self-attention, cross-attention and FFN; branch ``3i + j`` (j = 0 SA, 1 CA, 2 FFN) caches that
sub-block's residual-branch output, the tensor BAC hooks (``algorithms.md`` §6.2: the ``dropout1..3``
outputs of a torch decoder layer). The condition memory (time token + observation tokens through
a small MLP) is recomputed at every call: it is cheap and its time part changes every call.
Depth order is branch order and the FFN branches are ``3i + 2``, what ``schedules.bac``'s bubbling
union needs.
"""

from __future__ import annotations

import torch
from torch import nn

from dmc.cache.block_graphs import with_flat_forward
from dmc.errors import DmcError
from dmc.policies.transformer1d import SUBLAYERS

PREDICTION = "prediction"
BASE_INPUTS = ("sample", "timestep", "global_cond")


def branch_labels(num_layers: int) -> list[str]:
    return [f"l{i}.{kind}" for i in range(num_layers) for kind in SUBLAYERS]


def branch_layout(denoiser) -> tuple[list[str], list[int]]:
    """Labels in depth order and the FFN branches' indices."""
    n = len(denoiser.transformer.layers)
    return branch_labels(n), [3 * i + 2 for i in range(n)]


def branch_modules(denoiser) -> list[nn.Module]:
    """The modules whose outputs are the branches, in branch order (for recording and the router)."""
    return [m for layer in denoiser.transformer.layers
            for m in (layer.self_attn.out_proj, layer.multihead_attn.out_proj, layer.linear2)]


class PolicyCachedStep(nn.Module):
    """One DP-T call computing the sub-blocks ``pattern`` marks and reading the others from
    ``cache.l{i}.{sa,ca,ff}`` inputs; returns the prediction and the ``outputs`` branches.
    With every branch computed it is the denoiser."""

    def __new__(cls, denoiser=None, pattern=None, outputs=None):
        if cls is PolicyCachedStep and pattern is not None:
            cls = with_flat_forward(PolicyCachedStep, BASE_INPUTS, int(sum(not bool(p) for p in pattern)))
        return super().__new__(cls)

    def __init__(self, denoiser, pattern, outputs=None):
        super().__init__()
        self.denoiser = denoiser  # same attribute path as the full graph: initializer names match
        labels = branch_labels(len(denoiser.transformer.layers))
        pattern = tuple(bool(p) for p in pattern)
        if len(pattern) != len(labels):
            raise DmcError(f"pattern has {len(pattern)} entries; this transformer has {len(labels)} sub-blocks")
        outputs = pattern if outputs is None else tuple(bool(o) for o in outputs)
        if any(o and not p for o, p in zip(outputs, pattern)):
            raise DmcError("outputs must be a subset of the computed sub-blocks")
        self.pattern, self.outputs, self.labels = pattern, outputs, labels
        self.cache_inputs = [f"cache.{lab}" for lab, p in zip(labels, pattern) if not p]
        self.cache_outputs = [f"cache.{lab}" for lab, o in zip(labels, outputs) if o]
        self.input_names = list(BASE_INPUTS) + self.cache_inputs
        self.output_names = [PREDICTION] + self.cache_outputs
        self.eval()

    def describe(self) -> str:
        computed = [lab for lab, p in zip(self.labels, self.pattern) if p]
        if len(computed) == len(self.labels):
            return "DP-T, every sub-block computed" + (
                f"; writes {len(self.cache_outputs)} sub-block caches" if self.cache_outputs else "")
        return f"DP-T, computes {len(computed)}/{len(self.labels)} sub-blocks; the rest read from cache"

    def step(self, sample, timestep, global_cond, cached: list):
        net = self.denoiser.transformer
        if len(cached) != len(self.cache_inputs):
            raise ValueError(f"expected {len(self.cache_inputs)} cache tensors, got {len(cached)}")
        reads, writes = iter(cached), []
        memory = net.memory(timestep, self.denoiser.tokens(global_cond))
        x = net.embed(sample)
        for j, (compute, write) in enumerate(zip(self.pattern, self.outputs)):
            i, kind = divmod(j, len(SUBLAYERS))
            if compute:
                branch = net.sublayer(i, SUBLAYERS[kind], x, memory)
                if write:
                    writes.append(branch)
            else:
                branch = next(reads)
            x = x + branch
        out = net.out(x)
        return (out, *writes) if writes else out


def example_inputs(step: PolicyCachedStep, batch: int = 2) -> tuple:
    base = step.denoiser.example_inputs(batch)
    horizon, width = step.denoiser.sample_shape[0], step.denoiser.transformer.head.in_features
    return (*base, *(torch.randn(batch, horizon, width) for _ in step.cache_inputs))


def build_policy_cache(ctx, refresh) -> None:
    """Install the cached-step graphs for ``refresh`` ``[K, 3L]`` (``block_graphs``)."""
    from dmc.cache.block_graphs import install_block_graphs

    denoiser = ctx.adapter
    labels, _ = branch_layout(denoiser)
    if tuple(refresh.shape) != (len(ctx.calls), len(labels)):
        raise DmcError(f"DP-T cache schedule must be [{len(ctx.calls)} calls, {len(labels)} sub-blocks], "
                       f"got {list(refresh.shape)}")
    install_block_graphs(ctx, refresh, lambda pattern, outputs: PolicyCachedStep(denoiser, pattern, outputs),
                         example_inputs, "dpt")
