"""Joint-attention transformers: SD3 (``SD3Transformer2DModel``) and Flux (``FluxTransformer2DModel``).

SD3 takes the concatenated CLIP+T5 states (77 + 256 tokens) and the pooled CLIP projections.

Flux works on *packed* latents (2x2 patches of the 16-channel VAE latent as 64-wide tokens) with
rotary position ids for text and image tokens. dmc's graph still takes and returns the unpacked
latent ``[B, 16, H, W]`` and packs inside the graph: the sampler, the initial noise, guidance and
the cache/runtime contract (``sample [B,C,H,W]``) then stay the same for every family, and packing
is two reshapes. The position ids follow from the latent size (image tokens: row/column of each
patch; text tokens: zeros, as ``FluxPipeline`` builds them), so they are constants of the graph,
not inputs. ``timestep`` stays native (0..1000) at the graph input; Flux's own ``t/1000`` scaling
happens inside. A guidance-distilled model (``guidance_embeds``, FLUX.1-dev) takes the guidance
scale as the ``guidance`` input (default 3.5, the same in both halves of a guided batch).
"""

from __future__ import annotations

import numpy as np
import torch

from dmc.models.adapters import Adapter, CondInput, Conditioning, text_conditioning

SD3_TOKENS = 77 + 256  # CLIP (padded to T5's width) + T5, as StableDiffusion3Pipeline concatenates them
FLUX_TOKENS = 512  # T5 max_sequence_length of FLUX.1-dev (schnell: 256)
FLUX_DEFAULT_GUIDANCE = 3.5
FLUX_DEFAULT_LATENT = 128  # 1024 px / VAE factor 8; Flux configs carry no sample_size


class SD3Adapter(Adapter):
    family = "transformer"
    tokens = SD3_TOKENS

    def conditioning(self) -> Conditioning:
        cfg = self.model.config
        return text_conditioning(self.tokens, cfg.joint_attention_dim,
                                 CondInput("pooled_projections", (cfg.pooled_projection_dim,)))

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections):
        out = self.model(hidden_states=sample, encoder_hidden_states=encoder_hidden_states,
                         pooled_projections=pooled_projections, timestep=timestep, return_dict=False)[0]
        return self._pred(out)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/2)(W/2), 4C]``: FluxPipeline's 2x2 patch packing."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack`."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(h: int, w: int) -> torch.Tensor:
    """Rotary ids ``[(h/2)(w/2), 3]`` of the packed image tokens: (0, row, column)."""
    rows = torch.arange(h // 2, dtype=torch.float32)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2, dtype=torch.float32)[None, :].expand(h // 2, w // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)


class FluxAdapter(Adapter):
    family = "transformer"
    tokens = FLUX_TOKENS

    @staticmethod
    def latent_channels(cfg) -> int:
        return cfg.in_channels // 4  # 64-wide packed tokens = 16 latent channels x 2x2

    @staticmethod
    def default_size(cfg):
        return FLUX_DEFAULT_LATENT

    def pipeline_sigmas(self, steps: int):
        return np.linspace(1.0, 1.0 / steps, steps)  # FluxPipeline's, shifted by the scheduler's mu

    def conditioning(self) -> Conditioning:
        cfg = self.model.config
        extra = [CondInput("pooled_projections", (cfg.pooled_projection_dim,))]
        if cfg.guidance_embeds:
            extra.append(CondInput("guidance", (), uncond="same", default=FLUX_DEFAULT_GUIDANCE))
        return text_conditioning(self.tokens, cfg.joint_attention_dim, *extra)

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections, guidance=None):
        h, w = sample.shape[-2:]
        txt_ids = torch.zeros(encoder_hidden_states.shape[1], 3, dtype=sample.dtype)
        out = self.model(hidden_states=pack(sample), encoder_hidden_states=encoder_hidden_states,
                         pooled_projections=pooled_projections, timestep=timestep / 1000, img_ids=image_ids(h, w),
                         txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        return self._pred(unpack(out, h, w))
