"""The adapter contract: a uniform ``forward(sample, timestep, *conditions)`` per architecture family.

The adapter is what gets exported. Its ONNX inputs are ``sample [B,C,H,W]``, ``timestep [B]``
(float32, the native timestep) and then the family's conditioning inputs, each named and described
by a :class:`CondInput` (``class_labels [B]``, ``encoder_hidden_states [B,S,D]``, SDXL's
``text_embeds``/``time_ids``, ...). Its output is the prediction channels only (a learned-variance
half, as DiT-XL/2 and PixArt have, is dropped). The families themselves live in
``dmc.models.families``; later passes name cacheable points there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

UNCOND_POLICIES = ("zeros", "same", "null_class")


@dataclass(frozen=True)
class CondInput:
    """One named conditioning input of the graphs, as the runtime must feed it.

    ``shape`` is per image (the batch dimension is added). ``default`` (a scalar or a nested list of
    ``shape``) is fed when the caller gives nothing; None means zeros. ``uncond`` says what the
    unconditional half of a guided batch gets when the caller gives no unconditional value:
    ``zeros`` (an empty prompt's embedding stands in as zeros), ``same`` (a size/crop/guidance
    condition, identical in both halves) or ``null_class`` (the model's null label).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    uncond: str = "zeros"
    default: float | list | None = None

    def __post_init__(self):
        if self.uncond not in UNCOND_POLICIES:
            raise ValueError(f"{self.name}: uncond must be one of {UNCOND_POLICIES}")

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "uncond": self.uncond,
                "default": self.default}

    def value(self, batch: int) -> np.ndarray:
        """The default value for ``batch`` images."""
        one = np.zeros(self.shape, self.dtype) if self.default is None else np.asarray(self.default, self.dtype)
        return np.ascontiguousarray(np.broadcast_to(one, (batch, *self.shape)))


@dataclass(frozen=True)
class Conditioning:
    """What the model is conditioned on, and what "unconditional" means for guidance.

    ``kind`` is the summary older readers understand (``none``/``class``/``embedding``);
    ``inputs`` lists every conditioning graph input in graph order.
    """

    kind: str  # "none" | "class" | "embedding"
    num_classes: int = 0
    null_class: int | None = None
    embedding_shape: tuple[int, int] | None = None  # (tokens, dim) of encoder_hidden_states
    inputs: tuple[CondInput, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"kind": self.kind, "num_classes": self.num_classes, "null_class": self.null_class,
                "embedding_shape": list(self.embedding_shape) if self.embedding_shape else None,
                "inputs": [i.to_json() for i in self.inputs]}

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]


def class_conditioning(num_classes: int, null_class: int | None) -> Conditioning:
    return Conditioning("class", num_classes, null_class,
                        inputs=(CondInput("class_labels", (), "int64", uncond="null_class"),))


def text_conditioning(tokens: int, dim: int, *extra: CondInput) -> Conditioning:
    """``encoder_hidden_states [tokens, dim]`` first, then ``extra`` inputs."""
    return Conditioning("embedding", embedding_shape=(tokens, dim),
                        inputs=(CondInput("encoder_hidden_states", (tokens, dim)), *extra))


class Adapter(nn.Module):
    """Base class. Subclasses set ``family`` and define ``conditioning()`` and a flat ``forward``
    (the exporter maps graph input names onto its positional parameters)."""

    family = "base"  # broad kind the passes dispatch on: "unet" | "dit" | "transformer"

    def __init__(self, model: nn.Module, resolution: tuple[int, int] | None = None):
        super().__init__()
        self.model = model.eval()
        cfg = model.config
        self.in_channels = self.latent_channels(cfg)
        size = resolution or self.default_size(cfg)
        self.sample_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    @staticmethod
    def latent_channels(cfg) -> int:
        return cfg.in_channels

    @staticmethod
    def default_size(cfg):
        return cfg.sample_size

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, *self.sample_size)

    def pipeline_sigmas(self, steps: int):
        """The sigmas the model's own diffusers pipeline hands ``set_timesteps`` (None: the scheduler's spacing)."""
        return None

    @property
    def pixel_size(self) -> tuple[int, int]:
        """The image size a latent model is conditioned on (the usual VAE factor 8)."""
        return (8 * self.sample_size[0], 8 * self.sample_size[1])

    @property
    def input_names(self) -> list[str]:
        return ["sample", "timestep"] + self.conditioning().names

    def conditioning(self) -> Conditioning:
        return Conditioning("none")

    def example_inputs(self, batch: int = 2) -> tuple:
        x = torch.randn(batch, *self.sample_shape)
        t = torch.linspace(999, 1, batch)
        conds = []
        for spec in self.conditioning().inputs:
            if spec.dtype == "int64":
                conds.append(torch.arange(batch) % max(self.conditioning().num_classes, 1))
            elif spec.default is not None:
                conds.append(torch.from_numpy(spec.value(batch)))
            else:
                conds.append(torch.randn(batch, *spec.shape))
        return (x, t, *conds)

    def _pred(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, : self.in_channels] if out.shape[1] != self.in_channels else out


def make_adapter(model, class_name: str | None = None, resolution: tuple[int, int] | None = None) -> Adapter:
    """The family adapter for a loaded diffusers model (see ``dmc.models.families``). The family is read
    from the model's own class and config; ``class_name`` is accepted for older callers and not needed."""
    from dmc.models.families import family_of_model

    return family_of_model(model).adapter(model, resolution).eval()
