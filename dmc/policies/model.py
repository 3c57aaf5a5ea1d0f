"""The torch side of a diffusion policy: the denoiser and the observation encoder, as graphs see them.

``Denoiser``: ``(sample [B, horizon, action_dim], timestep [B], global_cond [B, G]) -> prediction``,
the graph the sampler calls. ``ObservationEncoder``: the normalised observation history of each
feature, ``[B, n_obs_steps, dim]`` in the spec's order, concatenated per step and flattened, as
LeRobot's ``_prepare_global_conditioning`` does (its own graph, so image encoders plug in here).
"""

from __future__ import annotations

import torch
from torch import nn

from dmc.errors import DmcError
from dmc.policies.lerobot import PolicySpec
from dmc.policies.unet1d import ConditionalUnet1d

DENOISER_INPUTS = ["sample", "timestep", "global_cond"]


class Denoiser(nn.Module):
    def __init__(self, unet: ConditionalUnet1d):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, global_cond):
        return self.unet(sample, timestep, global_cond)


class StateEncoder(nn.Module):
    def forward(self, state):
        return state.flatten(1)


class StateEnvironmentEncoder(nn.Module):
    def forward(self, state, environment_state):
        return torch.cat([state, environment_state], dim=-1).flatten(1)


def observation_encoder(spec: PolicySpec) -> nn.Module:
    """The encoder for the spec's observations (fixed arity: the exporter maps inputs positionally)."""
    return StateEncoder() if len(spec.observations) == 1 else StateEnvironmentEncoder()


def build_unet(spec: PolicySpec) -> ConditionalUnet1d:
    c = spec.config
    return ConditionalUnet1d(spec.action.shape[0], spec.global_cond_dim, list(c["down_dims"]),
                             kernel_size=int(c.get("kernel_size", 5)), n_groups=int(c.get("n_groups", 8)),
                             step_embed_dim=int(c.get("diffusion_step_embed_dim", 128)),
                             film_scale=bool(c.get("use_film_scale_modulation", True)))


def load_denoiser(spec: PolicySpec) -> Denoiser:
    """The denoiser with the folder's ``diffusion.unet.*`` weights (every tensor checked by name and shape)."""
    from safetensors.torch import load_file

    from dmc.models.loading import check_finite_weights

    unet = build_unet(spec)
    state = {k[len("diffusion.unet."):]: v for k, v in load_file(str(spec.weights)).items()
             if k.startswith("diffusion.unet.")}
    check_finite_weights(state, str(spec.folder))
    want = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or unexpected or wrong:
        k = (wrong or missing or unexpected)[0]
        raise DmcError(f"{spec.weights}: the UNet weights do not match config.json ({len(missing)} missing, "
                       f"{len(unexpected)} unexpected, {len(wrong)} with wrong shapes; e.g. diffusion.unet.{k})")
    unet.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return Denoiser(unet).eval().requires_grad_(False)
