"""DiT and PixArt, including the hub's ``Transformer2DModel`` configs of both.

DiT-XL/2 and PixArt checkpoints on the hub name their class ``Transformer2DModel``; diffusers
itself remaps them by ``norm_type`` to ``DiTTransformer2DModel`` (ada_norm_zero) and
``PixArtTransformer2DModel`` (ada_norm_single), whose parameter names are the same. dmc decides
the same way, and falls back to the tensors (class embedder vs. adaLN-single) when a config
leaves ``norm_type`` out.

Both predict a learned variance next to the noise (out_channels = 2 * in_channels); only the
prediction half reaches the graph output.
"""

from __future__ import annotations

from collections.abc import Collection

import torch.nn.functional as F
from torch import nn

from dmc.models.adapters import Adapter, CondInput, Conditioning, class_conditioning, text_conditioning

PIXART_TOKENS = 120  # T5 tokens of PixArt-α's pipeline (PixArt-Σ uses 300)


def is_dit(config: dict, names: Collection[str]) -> bool:
    norm = config.get("norm_type")
    if norm is not None:
        return norm == "ada_norm_zero" and bool(config.get("num_embeds_ada_norm"))
    return any(".norm1.emb.class_embedder." in n for n in names)


def is_pixart(config: dict, names: Collection[str]) -> bool:
    norm = config.get("norm_type")
    if norm is not None:
        return norm == "ada_norm_single" and bool(config.get("caption_channels"))
    return any(n.startswith("adaln_single.") for n in names) and any(n.startswith("caption_projection.")
                                                                    for n in names)


class DiTAdapter(Adapter):
    """Class-conditional DiT: ``class_labels [B]``; label ``num_embeds_ada_norm`` is the null class."""

    family = "dit"

    def __init__(self, model, resolution=None):
        super().__init__(model, resolution)
        self.num_classes = model.config.num_embeds_ada_norm

    def conditioning(self) -> Conditioning:
        # diffusers' LabelEmbedding appends one extra row, the null class, when trained with label dropout.
        return class_conditioning(self.num_classes, self.num_classes)

    def forward(self, sample, timestep, class_labels):
        return self._pred(self.model(sample, timestep, class_labels=class_labels, return_dict=False)[0])


class MaskedCrossAttention:
    """Cross-attention with the text mask as an additive bias broadcast over heads and queries.

    The same computation as diffusers' ``AttnProcessor2_0`` for PixArt's cross-attention (no norms,
    no residual), but without ``prepare_attention_mask``'s repeat-per-head and reshape by batch, which
    torch's ONNX exporter cannot express with a dynamic batch. ``attention_mask`` arrives as the
    ``[B, 1, S]`` bias PixArt's forward makes from the 0/1 mask.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        b = hidden_states.shape[0]
        q = attn.to_q(hidden_states)
        k = attn.to_k(encoder_hidden_states)
        v = attn.to_v(encoder_hidden_states)
        d = k.shape[-1] // attn.heads
        q, k, v = (t.reshape(b, -1, attn.heads, d).transpose(1, 2) for t in (q, k, v))
        bias = None if attention_mask is None else attention_mask[:, None].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, -1, attn.heads * d)))
        return out / attn.rescale_output_factor


class _KeepUnitAxis(nn.Linear):
    """PixArt's ``proj_out`` returning ``[B, 1, T, D]``: the model then ``squeeze(1)``s its output, a no-op in
    torch for T > 1 that the ONNX exporter writes as a Squeeze ONNX Runtime rejects. Same parameters."""

    def forward(self, x):
        return super().forward(x).unsqueeze(1)


class PixArtAdapter(Adapter):
    """PixArt-α/Σ: T5 states ``[120, caption_channels]`` with their attention mask; where the config enables
    ``use_additional_conditions`` (the 1024-px models), also ``resolution [2]`` and ``aspect_ratio [1]``."""

    family = "transformer"
    tokens = PIXART_TOKENS

    def __init__(self, model, resolution=None):
        super().__init__(model, resolution)
        self.extra = bool(model.use_additional_conditions)
        if type(model.proj_out) is nn.Linear:
            model.proj_out.__class__ = _KeepUnitAxis
        for block in model.transformer_blocks:
            if block.attn2 is not None:
                block.attn2.set_processor(MaskedCrossAttention())

    def conditioning(self) -> Conditioning:
        h, w = self.pixel_size
        extra = [CondInput("encoder_attention_mask", (self.tokens,), uncond="same", default=1.0)]
        if self.extra:
            extra += [CondInput("resolution", (2,), uncond="same", default=[float(h), float(w)]),
                      CondInput("aspect_ratio", (1,), uncond="same", default=[h / w])]
        return text_conditioning(self.tokens, self.model.config.caption_channels, *extra)

    def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask, resolution=None,
                aspect_ratio=None):
        added = {"resolution": resolution, "aspect_ratio": aspect_ratio}
        out = self.model(sample, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                         added_cond_kwargs=added, encoder_attention_mask=encoder_attention_mask,
                         return_dict=False)[0]
        return self._pred(out)
