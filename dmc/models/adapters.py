"""One small adapter per architecture family: a uniform ``forward(sample, timestep, cond)``.

The adapter is what gets exported: its ONNX inputs are ``sample [B,C,H,W]``, ``timestep [B]``
(float32, the native timestep) and, by family, ``class_labels [B]`` or
``encoder_hidden_states [B,S,D]``. Its output is the prediction channels only (a learned
variance half, as DiT-XL has, is dropped). Later passes name cacheable points here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dmc.errors import DmcError


@dataclass(frozen=True)
class Conditioning:
    """What the model is conditioned on, and what "unconditional" means for guidance."""

    kind: str  # "none" | "class" | "embedding"
    num_classes: int = 0
    null_class: int | None = None
    embedding_shape: tuple[int, int] | None = None  # (tokens, dim) for "embedding"

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


class Adapter(nn.Module):
    family = "base"
    cond_input: str | None = None

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        cfg = model.config
        self.in_channels = cfg.in_channels
        size = cfg.sample_size
        self.sample_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, *self.sample_size)

    @property
    def input_names(self) -> list[str]:
        return ["sample", "timestep"] + ([self.cond_input] if self.cond_input else [])

    def conditioning(self) -> Conditioning:
        return Conditioning("none")

    def example_inputs(self, batch: int = 2) -> tuple:
        x = torch.randn(batch, *self.sample_shape)
        t = torch.linspace(999, 1, batch)
        return (x, t)

    def _pred(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, : self.in_channels] if out.shape[1] != self.in_channels else out


class UNet2DAdapter(Adapter):
    family = "unet"

    def __init__(self, model, null_class: int | None = None):
        super().__init__(model)
        self.num_class_embeds = model.config.num_class_embeds
        if self.num_class_embeds:
            self.cond_input = "class_labels"
        # Convention (the demo follows it): the last class embedding is the null class.
        self.null_class = null_class if null_class is not None else (
            self.num_class_embeds - 1 if self.num_class_embeds else None)

    def conditioning(self) -> Conditioning:
        if not self.num_class_embeds:
            return Conditioning("none")
        return Conditioning("class", self.num_class_embeds - 1, self.null_class)

    def example_inputs(self, batch: int = 2) -> tuple:
        x, t = super().example_inputs(batch)
        if self.cond_input:
            return (x, t, torch.arange(batch) % self.num_class_embeds)
        return (x, t)

    def forward(self, sample, timestep, class_labels=None):
        return self._pred(self.model(sample, timestep, class_labels=class_labels, return_dict=False)[0])


class UNet2DConditionAdapter(Adapter):
    family = "unet"
    cond_input = "encoder_hidden_states"

    def __init__(self, model, tokens: int = 77):
        super().__init__(model)
        dim = model.config.cross_attention_dim
        self.embedding_shape = (tokens, dim if isinstance(dim, int) else dim[0])

    def conditioning(self) -> Conditioning:
        return Conditioning("embedding", embedding_shape=self.embedding_shape)

    def example_inputs(self, batch: int = 2) -> tuple:
        x, t = super().example_inputs(batch)
        return (x, t, torch.randn(batch, *self.embedding_shape))

    def forward(self, sample, timestep, encoder_hidden_states):
        out = self.model(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        return self._pred(out)


class DiTAdapter(Adapter):
    family = "dit"
    cond_input = "class_labels"

    def __init__(self, model):
        super().__init__(model)
        self.num_classes = model.config.num_embeds_ada_norm

    def conditioning(self) -> Conditioning:
        # diffusers' LabelEmbedding appends one extra row, the null class, when trained with label dropout.
        return Conditioning("class", self.num_classes, self.num_classes)

    def example_inputs(self, batch: int = 2) -> tuple:
        x, t = super().example_inputs(batch)
        return (x, t, torch.arange(batch) % self.num_classes)

    def forward(self, sample, timestep, class_labels):
        return self._pred(self.model(sample, timestep, class_labels=class_labels, return_dict=False)[0])


ADAPTERS = {
    "UNet2DModel": UNet2DAdapter,
    "UNet2DConditionModel": UNet2DConditionAdapter,
    "DiTTransformer2DModel": DiTAdapter,
}


def make_adapter(model, class_name: str | None = None) -> Adapter:
    class_name = class_name or type(model).__name__
    if class_name not in ADAPTERS:
        raise DmcError(f"no adapter for {class_name} (have: {', '.join(ADAPTERS)})")
    return ADAPTERS[class_name](model).eval()
