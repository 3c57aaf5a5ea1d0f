"""The torch side of a diffusion policy: the denoiser and the observation encoder, as graphs see them.

``Denoiser``: ``(sample [B, horizon, action_dim], timestep [B], global_cond [B, G]) -> prediction``,
the graph the sampler calls. The observation encoder takes the normalised history of each feature
in the spec's order (``[B, n_obs_steps, dim]``; images ``[B, n_obs_steps, C, H, W]``), runs each
camera through its image encoder, concatenates per step and flattens, as LeRobot's
``_prepare_global_conditioning`` does.
"""

from __future__ import annotations

import torch
from torch import nn

from dmc.errors import DmcError
from dmc.policies.lerobot import VISUAL, PolicySpec
from dmc.policies.transformer1d import TransformerForDiffusion
from dmc.policies.unet1d import ConditionalUnet1d

DENOISER_INPUTS = ["sample", "timestep", "global_cond"]


class Denoiser(nn.Module):
    """The graph the sampler calls; also the adapter the compile passes see (``dmc.models.adapters``):
    ``sample_shape`` ``(horizon, action_dim)``, one conditioning input ``global_cond``.
    ``family`` picks the cache pass's handler; ``class_name``/``describe`` go to the manifest."""

    family = "policy"
    class_name = "DiffusionConditionalUnet1d"
    describe = "the denoiser (conditional 1D UNet)"

    def __init__(self, unet: ConditionalUnet1d, horizon: int, action_dim: int, cond_dim: int):
        super().__init__()
        self.unet = unet
        self.model = unet
        self._init(horizon, action_dim, cond_dim)

    def _init(self, horizon: int, action_dim: int, cond_dim: int) -> None:
        self.sample_shape = (horizon, action_dim)
        self.cond_dim = cond_dim
        self.input_names = list(DENOISER_INPUTS)

    def conditioning(self):
        from dmc.models.adapters import CondInput, Conditioning

        return Conditioning("embedding", inputs=(CondInput("global_cond", (self.cond_dim,)),))

    def example_inputs(self, batch: int = 2) -> tuple:
        return (torch.randn(batch, *self.sample_shape), torch.linspace(90, 1, batch), torch.randn(batch, self.cond_dim))

    def forward(self, sample, timestep, global_cond):
        return self.unet(sample, timestep, global_cond)


class TransformerDenoiser(Denoiser):
    """DP-T: the flat condition ``[B, n_obs_steps * per_step]`` (what the observation encoder gives,
    step-major) becomes one token per observation step."""

    family = "policy-transformer"
    class_name = "TransformerForDiffusion"
    describe = "the denoiser (Diffusion Policy transformer, DP-T)"

    def __init__(self, transformer: TransformerForDiffusion, horizon: int, action_dim: int, cond_dim: int):
        nn.Module.__init__(self)
        self.transformer = transformer
        self.model = transformer
        self._init(horizon, action_dim, cond_dim)

    def tokens(self, global_cond):
        return global_cond.unflatten(1, (self.transformer.n_obs_steps, -1))

    def forward(self, sample, timestep, global_cond):
        return self.transformer(sample, timestep, self.tokens(global_cond))


class ObservationEncoderBase(nn.Module):
    """``encode(features)``; ``image_encoders[i]`` encodes the i-th image feature (shared modules allowed)."""

    def __init__(self, kinds: list[str], image_encoders: list[nn.Module]):
        super().__init__()
        self.kinds = kinds
        self.image_encoders = nn.ModuleList(image_encoders)

    def encode(self, features):
        parts, cams = [], iter(range(len(self.image_encoders)))
        for kind, x in zip(self.kinds, features):
            if kind == VISUAL:
                b, s = x.shape[:2]
                parts.append(self.image_encoders[next(cams)](x.flatten(0, 1)).reshape(b, s, -1))
            else:
                parts.append(x)
        return torch.cat(parts, dim=-1).flatten(1)


def observation_encoder(spec: PolicySpec, image_encoders: list[nn.Module] | None = None) -> nn.Module:
    """The encoder of the spec's observations, with one positional input per feature: the exporter
    maps graph inputs positionally and ``torch.export`` does not take ``*args``, so ``forward`` gets
    an explicit signature of that arity."""
    names = [f"x{i}" for i in range(len(spec.observations))]
    namespace: dict = {}
    exec(f"def forward(self, {', '.join(names)}):\n    return self.encode([{', '.join(names)}])", namespace)
    cls = type(f"ObservationEncoder{len(names)}", (ObservationEncoderBase,), {"forward": namespace["forward"]})
    return cls([f.type for f in spec.observations], image_encoders or []).eval()


def load_observation_encoder(spec: PolicySpec) -> nn.Module:
    """The observation encoder with the folder's ``diffusion.rgb_encoder.*`` weights (one shared encoder,
    or one per camera with ``use_separate_rgb_encoder_per_camera``)."""
    if not spec.images:
        return observation_encoder(spec)
    from safetensors.torch import load_file

    from dmc.policies.vision import RgbEncoder

    c = spec.config
    crop = tuple(c["crop_shape"]) if c.get("crop_shape") else None
    make = lambda: RgbEncoder(c.get("vision_backbone", "resnet18"), spec.images[0].shape, crop,  # noqa: E731
                              int(c.get("spatial_softmax_num_keypoints", 32)), bool(c.get("use_group_norm", True)))
    separate = bool(c.get("use_separate_rgb_encoder_per_camera", False))
    weights = {k[len("diffusion.rgb_encoder."):]: v for k, v in load_file(str(spec.weights)).items()
               if k.startswith("diffusion.rgb_encoder.")}
    if separate:
        encoders = [make() for _ in spec.images]
        for i, enc in enumerate(encoders):
            _load_checked(enc, {k[len(f"{i}."):]: v for k, v in weights.items() if k.startswith(f"{i}.")},
                          spec, f"diffusion.rgb_encoder.{i}.")
    else:
        shared = make()
        _load_checked(shared, weights, spec, "diffusion.rgb_encoder.")
        encoders = [shared] * len(spec.images)
    return observation_encoder(spec, encoders).requires_grad_(False)


def build_unet(spec: PolicySpec) -> ConditionalUnet1d:
    c = spec.config
    return ConditionalUnet1d(spec.action.shape[0], spec.global_cond_dim, list(c["down_dims"]),
                             kernel_size=int(c.get("kernel_size", 5)), n_groups=int(c.get("n_groups", 8)),
                             step_embed_dim=int(c.get("diffusion_step_embed_dim", 128)),
                             film_scale=bool(c.get("use_film_scale_modulation", True)))


def build_transformer(spec: PolicySpec) -> TransformerForDiffusion:
    c = spec.config
    return TransformerForDiffusion(spec.action.shape[0], spec.horizon, spec.n_obs_steps,
                                   spec.global_cond_dim // spec.n_obs_steps, n_layer=int(c["n_layer"]),
                                   n_head=int(c["n_head"]), n_emb=int(c["n_emb"]),
                                   causal_attn=bool(c.get("causal_attn", True)))


# config.json's noise_net -> (build the network, wrap it as the denoiser); key prefixes in lerobot.NOISE_NETS
NETWORKS = {"unet": (build_unet, Denoiser), "transformer": (build_transformer, TransformerDenoiser)}


def build_network(spec: PolicySpec) -> nn.Module:
    return NETWORKS[spec.noise_net][0](spec)


def load_denoiser(spec: PolicySpec) -> Denoiser:
    """The denoiser with the folder's ``diffusion.unet.*`` (or ``diffusion.transformer.*``) weights,
    every tensor checked by name and shape."""
    from safetensors.torch import load_file

    from dmc.policies.lerobot import NOISE_NETS

    build, wrap = NETWORKS[spec.noise_net]
    prefix = NOISE_NETS[spec.noise_net].prefix
    net = build(spec)
    state = {k[len(prefix):]: v for k, v in load_file(str(spec.weights)).items() if k.startswith(prefix)}
    for name in getattr(net, "DERIVED", ()):
        saved = state.pop(name, None)
        if saved is not None and not torch.equal(saved.to(torch.float32), getattr(net, name)):
            raise DmcError(f"{spec.weights}: {prefix}{name} differs from the one config.json implies")
    _load_checked(net, state, spec, prefix)
    return wrap(net, spec.horizon, spec.action.shape[0], spec.global_cond_dim).eval().requires_grad_(False)


def _load_checked(module: nn.Module, state: dict, spec: PolicySpec, prefix: str) -> None:
    """Every tensor by name and shape (a mismatch names the first offender), finite, then loaded."""
    from dmc.models.loading import check_finite_weights

    check_finite_weights(state, str(spec.folder))
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or unexpected or wrong:
        k = (wrong or missing or unexpected)[0]
        raise DmcError(f"{spec.weights}: the {prefix}* weights do not match config.json ({len(missing)} missing, "
                       f"{len(unexpected)} unexpected, {len(wrong)} with wrong shapes; e.g. {prefix}{k})")
    module.load_state_dict({k: v if v.dtype == torch.int64 else v.to(torch.float32) for k, v in state.items()})
    module.eval()
