"""Diffusion Policy's transformer denoiser (DP-T, Chi et al.'s ``TransformerForDiffusion``), written for dmc.

The shape BAC was designed on: the noisy action chunk is a sequence of ``horizon`` tokens, the
conditioning is a short sequence ``[time token, one token per observation step]`` passed through a
small encoder (the *memory*), and a stack of pre-norm decoder layers reads it by cross-attention.
Each decoder layer has three residual sub-blocks, the units BAC caches (``algorithms.md`` §6)::

    x = x + SA(norm1(x))                 # causal self-attention over the action tokens
    x = x + CA(norm2(x), memory)         # action token t sees condition tokens s <= t + 1
    x = x + FF(norm3(x))                 # linear1 -> GELU -> linear2

The parameters keep ``TransformerForDiffusion``'s names (``input_emb``, ``pos_emb``,
``cond_obs_emb``, ``cond_pos_emb``, ``encoder.{0,2}``, ``decoder.layers.N.{self_attn,
multihead_attn, linear1, linear2, norm1..3}``, ``ln_f``, ``head``), so its weights load as saved.
Only its conditioned form is covered (``obs_as_cond``, ``time_as_cond``, the MLP condition encoder
of ``n_cond_layers=0``); the sub-blocks are computed explicitly (not through torch's fused layer)
so a cached step can skip any of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmc.errors import DmcError
from dmc.policies.unet1d import SinusoidalEmbedding

SUBLAYERS = ("sa", "ca", "ff")


def _additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))


class TransformerForDiffusion(nn.Module):
    DERIVED = ("mask", "memory_mask")  # buffers the original saves (-inf where masked); recomputed here

    def __init__(self, action_dim: int, horizon: int, n_obs_steps: int, cond_dim: int, n_layer: int = 8,
                 n_head: int = 4, n_emb: int = 256, causal_attn: bool = True):
        super().__init__()
        if n_emb % n_head:
            raise DmcError(f"n_emb {n_emb} is not a multiple of n_head {n_head}")
        self.horizon, self.n_obs_steps, self.n_head = horizon, n_obs_steps, n_head
        cond_tokens = 1 + n_obs_steps
        self.input_emb = nn.Linear(action_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.time_emb = SinusoidalEmbedding(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, cond_tokens, n_emb))
        self.encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        layer = nn.TransformerDecoderLayer(n_emb, n_head, 4 * n_emb, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, n_layer)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        self.causal_attn = causal_attn
        if causal_attn:  # derived from the config; a saved copy is checked against them (DERIVED)
            t = torch.arange(horizon)
            self.register_buffer("mask", _additive(t[:, None] >= t[None, :]), persistent=False)
            s = torch.arange(cond_tokens)
            self.register_buffer("memory_mask", _additive(t[:, None] >= s[None, :] - 1), persistent=False)
        else:
            self.mask = self.memory_mask = None
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    @property
    def layers(self):
        return self.decoder.layers

    def memory(self, timestep, cond):
        """The condition tokens after the encoder: ``[B, 1 + n_obs_steps, n_emb]``."""
        time = self.time_emb(timestep.expand(cond.shape[0])).unsqueeze(1)
        tokens = torch.cat([time, self.cond_obs_emb(cond)], dim=1)
        return self.encoder(tokens + self.cond_pos_emb[:, : tokens.shape[1]])

    def embed(self, sample):
        return self.input_emb(sample) + self.pos_emb[:, : sample.shape[1]]

    def sublayer(self, i: int, kind: str, x, memory):
        """Sub-block ``kind`` of decoder layer ``i``: its residual branch (what is added to ``x``)."""
        layer = self.layers[i]
        if kind == "sa":
            h = layer.norm1(x)
            return self._attention(layer.self_attn, h, h, self.mask)
        if kind == "ca":
            return self._attention(layer.multihead_attn, layer.norm2(x), memory, self.memory_mask)
        return layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))

    def _attention(self, mha: nn.MultiheadAttention, query, context, mask):
        """``nn.MultiheadAttention``'s maths with separate q/k/v projections: its packed ``in_proj``
        exports as a split of one weight, which ONNX constant folding leaves in place, and a MatMul
        whose weight is not a constant is not quantized."""
        e, heads = query.shape[-1], self.n_head
        w, b = mha.in_proj_weight, mha.in_proj_bias
        split = lambda t: t.unflatten(-1, (heads, e // heads)).transpose(1, 2)  # noqa: E731
        q = split(F.linear(query, w[:e], b[:e]))
        k = split(F.linear(context, w[e: 2 * e], b[e: 2 * e]))
        v = split(F.linear(context, w[2 * e:], b[2 * e:]))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return mha.out_proj(attn.transpose(1, 2).flatten(2))

    def out(self, x):
        return self.head(self.ln_f(x))

    def forward(self, sample, timestep, cond):
        """``sample [B, horizon, action_dim]``, ``timestep [B]``, ``cond [B, n_obs_steps, cond_dim]``."""
        memory = self.memory(timestep, cond)
        x = self.embed(sample)
        for i in range(len(self.layers)):
            for kind in SUBLAYERS:
                x = x + self.sublayer(i, kind, x, memory)
        return self.out(x)

