"""DeepCache for Diffusion Policy's conditional 1D UNet (``dmc.policies.unet1d``).

The last up level of the UNet reads two things: the feature coming up from the deeper levels and
the skip of ``down_modules[1]`` (LeRobot's UNet never reads the first level's skip). The deep
feature changes slowly from one denoising call to the next, as DeepCache observed for image UNets,
and it is where the widest layers are (2048 channels at PushT's size). So:

- ``Full1d``: the whole network; also outputs ``cache.deep``, the input of the last up level
  (the output of ``up_modules[-2]`` after its upsampling; with two levels, of the mid blocks);
- ``Shallow1d``: ``down_modules[0]`` and the two blocks of ``down_modules[1]`` (for the skip), then
  the last up level on [``cache.deep``; skip], then ``final_conv``: every deeper level is skipped.

No cache correction here yet (the image UNet's per-channel DEC fit is written for 4-D features).
"""

from __future__ import annotations

import torch
from torch import nn

from dmc.errors import DmcError

CACHE = "cache.deep"


def check(denoiser) -> None:
    if len(denoiser.unet.down_modules) < 2:
        raise DmcError("--cache needs a 1D UNet with at least two levels (down_dims of length >= 2)")


def cache_point(denoiser) -> nn.Module:
    """The module whose output is ``cache.deep``."""
    unet = denoiser.unet
    return unet.up_modules[-2][2] if len(unet.up_modules) >= 2 else unet.mid_modules[-1]


class Full1d(nn.Module):
    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser
        self.input_names = list(denoiser.input_names)
        self.output_names = ["prediction", CACHE]

    def forward(self, sample, timestep, global_cond):
        return self.denoiser.unet(sample, timestep, global_cond, return_deep=True)


class Shallow1d(nn.Module):
    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser
        self.input_names = list(denoiser.input_names) + [CACHE]
        self.output_names = ["prediction"]

    def forward(self, sample, timestep, global_cond, deep):
        unet = self.denoiser.unet
        cond = unet.condition(timestep, global_cond)
        first, second, down = unet.down_modules[0]
        x = down(second(first(sample.transpose(1, 2), cond), cond))
        first, second, _ = unet.down_modules[1]
        return unet.last_level(deep, second(first(x, cond), cond), cond)


def build_modules(denoiser):
    """(full, shallow, full example inputs, shallow example inputs, MACs per chunk of each)."""
    from dmc.prune.costs import count_macs

    full, shallow = Full1d(denoiser).eval(), Shallow1d(denoiser).eval()
    ex_full = denoiser.example_inputs(2)
    with torch.inference_mode():
        _, deep = full(*ex_full)
    ex_shallow = ex_full + (deep.clone(),)
    one_full = tuple(t[:1] for t in ex_full)
    macs = {"full": count_macs(full, *one_full), "shallow": count_macs(shallow, *one_full, deep[:1].clone())}
    return full, shallow, ex_full, ex_shallow, macs
