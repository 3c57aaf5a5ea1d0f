"""Diffusion Policy's conditional 1D temporal UNet (Chi et al.), laid out as LeRobot saves it.

Written for dmc from the architecture's description; module names follow LeRobot's
``DiffusionConditionalUnet1d`` so its ``model.safetensors`` loads as is (``diffusion.unet.*``):

- ``diffusion_step_encoder``: sinusoidal embedding -> Linear(E, 4E) -> Mish -> Linear(4E, E);
- each residual block: Conv1d -> GroupNorm -> Mish (``conv1.block``), FiLM from the condition
  (``cond_encoder``: Mish -> Linear to a per-channel scale and bias, or bias only), the same conv
  block again (``conv2``), and a 1x1 ``residual_conv`` where the width changes;
- ``down_modules[i]``: two blocks and a stride-2 conv (none after the last level);
  ``mid_modules``: two blocks; ``up_modules[i]``: two blocks on [x; skip] and a transposed
  conv that doubles the length (every level, as LeRobot builds them);
- ``final_conv``: a conv block with 8 groups (LeRobot's default there, not ``n_groups``) and a
  1x1 conv to the action width.

The condition is the timestep embedding concatenated with the flattened observation features.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
        angles = t.to(torch.float32)[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout),
                                   nn.Mish())

    def forward(self, x):
        return self.block(x)


class FiLMResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int, film_scale: bool):
        super().__init__()
        self.cout, self.film_scale = cout, film_scale
        self.conv1 = ConvBlock(cin, cout, kernel, groups)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout if film_scale else cout))
        self.conv2 = ConvBlock(cout, cout, kernel, groups)
        self.residual_conv = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, cond):
        h = self.conv1(x)
        film = self.cond_encoder(cond).unsqueeze(-1)
        h = film[:, : self.cout] * h + film[:, self.cout:] if self.film_scale else h + film
        return self.conv2(h) + self.residual_conv(x)


class ConditionalUnet1d(nn.Module):
    """``forward(x [B, T, action_dim], timestep [B], global_cond [B, G]) -> [B, T, action_dim]``."""

    def __init__(self, action_dim: int, global_cond_dim: int, down_dims, kernel_size: int = 5, n_groups: int = 8,
                 step_embed_dim: int = 128, film_scale: bool = True):
        super().__init__()
        e = step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(SinusoidalEmbedding(e), nn.Linear(e, 4 * e), nn.Mish(),
                                                    nn.Linear(4 * e, e))
        cond_dim = e + global_cond_dim
        def block(cin, cout):
            return FiLMResidualBlock(cin, cout, cond_dim, kernel_size, n_groups, film_scale)
        widths = [action_dim, *down_dims]
        levels = list(zip(widths[:-1], widths[1:]))
        self.down_modules = nn.ModuleList(
            nn.ModuleList([block(cin, cout), block(cout, cout),
                           nn.Conv1d(cout, cout, 3, 2, 1) if i < len(levels) - 1 else nn.Identity()])
            for i, (cin, cout) in enumerate(levels))
        self.mid_modules = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up_modules = nn.ModuleList(
            nn.ModuleList([block(2 * cout, cin), block(cin, cin), nn.ConvTranspose1d(cin, cin, 4, 2, 1)])
            for cin, cout in reversed(levels[1:]))
        self.final_conv = nn.Sequential(ConvBlock(down_dims[0], down_dims[0], kernel_size),
                                        nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(self, x, timestep, global_cond, return_deep: bool = False):
        """``return_deep``: also the input of the last up level (DeepCache's cached feature)."""
        x = x.transpose(1, 2)
        cond = self.condition(timestep, global_cond)
        skips = []
        for first, second, down in self.down_modules:
            x = second(first(x, cond), cond)
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, cond)
        for first, second, up in self.up_modules[:-1]:
            x = up(second(first(torch.cat([x, skips.pop()], dim=1), cond), cond))
        deep = x
        out = self.last_level(x, skips.pop(), cond)
        return (out, deep) if return_deep else out

    def condition(self, timestep, global_cond):
        return torch.cat([self.diffusion_step_encoder(timestep), global_cond], dim=-1)

    def last_level(self, x, skip, cond):
        """The last up level on [x; skip], then the output convolutions: ``[B, T, action_dim]``."""
        first, second, up = self.up_modules[-1]
        x = up(second(first(torch.cat([x, skip], dim=1), cond), cond))
        return self.final_conv(x).transpose(1, 2)
