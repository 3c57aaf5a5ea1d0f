"""Per-branch feature caching for diffusers' ``DiTTransformer2DModel`` (L2C/HarmoniCa/BAC style).

Each of the L ``BasicTransformerBlock``s (``norm_type="ada_norm_zero"``) has two residual
branches, attention and MLP. The cache holds a branch's output *before* the adaLN gate
(``algorithms.md`` §7, §10.2.3); the gates, shifts and scales come from the current call's
timestep and class, so they are recomputed at every call::

    h = h + gate_msa * attn(norm1(h) * (1 + scale_msa) + shift_msa)       # "cache.b{i}.attn"
    h = h + gate_mlp * ff(norm3(h) * (1 + scale_mlp) + shift_mlp)         # "cache.b{i}.mlp"

Branch index j = 2·i + (0 for attention, 1 for MLP): index order is depth order and the odd
indices are the FFN branches (what ``schedules.bac`` needs).

``DiTCachedStep(adapter, pattern)`` re-implements the DiT forward with the model's own
submodules under the same attribute paths (``model.transformer_blocks.3.attn1.to_q...``), so
ONNX initializers keep the full graph's names. A refreshed branch is computed and, when some
later call reads it, returned as graph output ``cache.b{i}.{attn,mlp}``; a cached branch is a
graph input of that name, which the runtime's ``Pipeline`` feeds from its buffers.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmc.cache import block_graphs
from dmc.cache.block_graphs import install_block_graphs, with_flat_forward
from dmc.errors import DmcError

BRANCHES = ("attn", "mlp")
PREDICTION = "prediction"  # == dmc.compress.pipeline.OUTPUT_NAME (not imported: avoids a cycle)


def branch_labels(num_layers: int) -> list[str]:
    """``["b0.attn", "b0.mlp", "b1.attn", ...]``: branch j = 2·block + (0 attn, 1 mlp)."""
    return [f"b{i}.{b}" for i in range(num_layers) for b in BRANCHES]


def cache_names(num_layers: int) -> list[str]:
    """Graph input/output name of each branch's cached tensor: ``cache.b{i}.attn`` / ``cache.b{i}.mlp``."""
    return [f"cache.{label}" for label in branch_labels(num_layers)]


def _transformer(model_or_ctx) -> nn.Module:
    m = model_or_ctx
    if hasattr(m, "adapter"):  # a CompileContext
        m = m.adapter
    if hasattr(m, "family") and hasattr(m, "model"):  # an Adapter
        m = m.model
    return m


def dit_branch_layout(model_or_ctx) -> tuple[list[str], list[int]]:
    """Branch labels in depth order and the indices of the FFN (MLP) branches, for ``schedules.bac``."""
    model = _transformer(model_or_ctx)
    check_supported(model)
    n = len(model.transformer_blocks)
    return branch_labels(n), [2 * i + 1 for i in range(n)]


def check_supported(model) -> None:
    """Refuse DiT variants whose blocks this re-implementation does not cover."""
    if type(model).__name__ != "DiTTransformer2DModel":
        raise DmcError(f"DiT block caching supports DiTTransformer2DModel, got {type(model).__name__}")
    for i, block in enumerate(model.transformer_blocks):
        problems = []
        if getattr(block, "norm_type", None) != "ada_norm_zero":
            problems.append(f"norm_type {getattr(block, 'norm_type', None)!r} (need 'ada_norm_zero')")
        if block.attn2 is not None:
            problems.append("cross-attention")
        if block.pos_embed is not None:
            problems.append("per-block positional embedding")
        if block.only_cross_attention:
            problems.append("only_cross_attention")
        if getattr(block, "_chunk_size", None) is not None:
            problems.append("chunked feed-forward")
        if problems:
            raise DmcError(f"DiT block {i}: unsupported for caching ({', '.join(problems)})")


class DiTCachedStep(nn.Module):
    """One DiT call that computes the branches ``pattern`` marks and reads the others from cache.

    ``pattern``: 2L booleans (True = compute). ``outputs``: which computed branches to return
    as cache tensors (default: all computed ones). Inputs: ``sample, timestep, class_labels``
    then one ``cache.b{i}.{branch}`` per cached branch, in branch order. Returns the prediction,
    followed by the output cache tensors in branch order (a bare tensor when there are none).
    With every branch computed, output 0 equals the adapter's output.
    """

    def __new__(cls, adapter=None, pattern=None, outputs=None):
        if cls is DiTCachedStep and pattern is not None:
            cls = with_flat_forward(DiTCachedStep, ("sample", "timestep", "class_labels"),
                                    int(sum(not bool(p) for p in pattern)))
        return super().__new__(cls)

    def __init__(self, adapter, pattern, outputs=None):
        super().__init__()
        model = adapter.model
        check_supported(model)
        num_layers = len(model.transformer_blocks)
        pattern = tuple(bool(p) for p in pattern)
        if len(pattern) != 2 * num_layers:
            raise DmcError(f"pattern has {len(pattern)} entries; this DiT has {2 * num_layers} branches")
        outputs = pattern if outputs is None else tuple(bool(o) for o in outputs)
        if len(outputs) != len(pattern) or any(o and not p for o, p in zip(outputs, pattern)):
            raise DmcError("outputs must be a subset of the computed branches")
        self.model = model  # same attribute path as the adapter: initializer names match the full graph
        self.in_channels = adapter.in_channels
        self.base_inputs = list(adapter.input_names)
        self.pattern = pattern
        self.outputs = outputs
        names = cache_names(num_layers)
        self.cache_inputs = [n for n, p in zip(names, pattern) if not p]
        self.cache_outputs = [n for n, o in zip(names, outputs) if o]
        self.eval()

    @property
    def input_names(self) -> list[str]:
        return self.base_inputs + self.cache_inputs

    @property
    def output_names(self) -> list[str]:
        return [PREDICTION] + self.cache_outputs

    def describe(self) -> str:
        labels = branch_labels(len(self.pattern) // 2)
        computed = [lab for lab, p in zip(labels, self.pattern) if p]
        if len(computed) == len(labels):
            return "DiT, every attention/MLP branch computed" + (
                f"; writes {len(self.cache_outputs)} branch caches" if self.cache_outputs else "")
        if not computed:
            return "DiT, every attention/MLP branch read from cache (embeddings, gates and final layer only)"
        return (f"DiT, computes {len(computed)}/{len(labels)} branches ({' '.join(computed)}); "
                f"the rest read from cache")

    def forward(self, sample, timestep, class_labels, *cached):  # replaced per input count by __new__
        return self.step(sample, timestep, class_labels, list(cached))

    def step(self, sample, timestep, class_labels, cached: list):
        """diffusers ``DiTTransformer2DModel.forward`` + ``BasicTransformerBlock.forward`` (ada_norm_zero,
        no cross-attention), with per-branch cache reads and writes."""
        m = self.model
        if len(cached) != len(self.cache_inputs):
            raise ValueError(f"expected {len(self.cache_inputs)} cache tensors, got {len(cached)}")
        reads = iter(cached)
        writes = []
        hidden = m.pos_embed(sample)
        cond0 = None
        for i, block in enumerate(m.transformer_blocks):
            norm1 = block.norm1
            emb = norm1.emb(timestep, class_labels, hidden_dtype=hidden.dtype)
            if i == 0:
                cond0 = emb
            mod = norm1.linear(norm1.silu(emb))
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
            if self.pattern[2 * i]:
                attn = block.attn1(norm1.norm(hidden) * (1 + scale_msa[:, None]) + shift_msa[:, None])
                if self.outputs[2 * i]:
                    writes.append(attn)
            else:
                attn = next(reads)
            hidden = gate_msa.unsqueeze(1) * attn + hidden
            if self.pattern[2 * i + 1]:
                normed = block.norm3(hidden)
                ff = block.ff(normed * (1 + scale_mlp[:, None]) + shift_mlp[:, None])
                if self.outputs[2 * i + 1]:
                    writes.append(ff)
            else:
                ff = next(reads)
            hidden = gate_mlp.unsqueeze(1) * ff + hidden
        # final layer: conditioned on block 0's embedding, exactly as diffusers does
        shift, scale = m.proj_out_1(F.silu(cond0)).chunk(2, dim=1)
        hidden = m.norm_out(hidden) * (1 + scale[:, None]) + shift[:, None]
        hidden = m.proj_out_2(hidden)
        p = m.patch_size
        height, width = sample.shape[-2] // p, sample.shape[-1] // p
        hidden = hidden.reshape(shape=(-1, height, width, p, p, m.out_channels))
        hidden = torch.einsum("nhwpqc->nchpwq", hidden)
        out = hidden.reshape(shape=(-1, m.out_channels, height * p, width * p))
        if out.shape[1] != self.in_channels:  # learned-variance half dropped, as the adapter does
            out = out[:, : self.in_channels]
        return (out, *writes) if writes else out


def example_inputs(module: DiTCachedStep, adapter, sample_shape, batch: int = 2) -> tuple:
    """Export inputs: random sample, the adapter's timesteps and labels, random cache tensors."""
    c, h, w = sample_shape
    base = adapter.example_inputs(batch)
    p = module.model.patch_size
    tokens, dim = (h // p) * (w // p), module.model.inner_dim
    caches = tuple(torch.randn(batch, tokens, dim) for _ in module.cache_inputs)
    return (torch.randn(batch, c, h, w), *base[1:], *caches)


def graph_names(patterns: list[tuple]) -> list[str]:
    """``full`` for the all-computed pattern, ``dit.p0``, ``dit.p1``, ... for the others (first-use order)."""
    return block_graphs.graph_names(patterns, "dit")


def build_dit_cache(ctx, cfg, refresh: np.ndarray) -> None:
    """Install per-branch caching for a DiT context.

    ``refresh``: ``[K, 2L]`` bool (K = number of model calls, branch order of ``branch_labels``).
    One graph per distinct row (``block_graphs.install_block_graphs``): ``full`` for the all-computed
    row, ``dit.p<i>`` for the others. ``cfg`` (the cache pass's config) is not needed here; the
    pass records what it did in ``ctx.passes``.
    """
    del cfg
    model = ctx.adapter.model
    check_supported(model)
    num_layers = len(model.transformer_blocks)
    refresh = np.asarray(refresh, dtype=bool)
    if refresh.shape != (len(ctx.calls), 2 * num_layers):
        raise DmcError(f"DiT cache schedule must be [{len(ctx.calls)} calls, {2 * num_layers} branches], "
                       f"got {list(refresh.shape)}")
    install_block_graphs(ctx, refresh, lambda pattern, outputs: DiTCachedStep(ctx.adapter, pattern, outputs),
                         lambda step: example_inputs(step, ctx.adapter, ctx.sample_shape), "dit")


__all__ = ["DiTCachedStep", "build_dit_cache", "dit_branch_layout",
           "branch_labels", "cache_names", "check_supported", "graph_names"]
