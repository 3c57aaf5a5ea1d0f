"""Maskable structures: what a mask unit is, where its mask applies, and how it is sliced away.

One handler per module type (a registry, keyed by kind); each family lists the kinds it masks:

- ``heads``  diffusers ``Attention``: one unit per head; the mask multiplies the head's output
  before ``to_out[0]`` (EcoDiff). Slicing keeps the heads' rows of ``to_q/to_k/to_v`` and
  columns of ``to_out[0]``; head_dim is unchanged.
- ``ffn``    diffusers ``FeedForward``: one unit per hidden neuron, masked after the activation.
  Slicing keeps rows of the up-projection (both halves for GEGLU/SwiGLU) and columns of the
  down-projection.
- ``resnet`` diffusers ``ResnetBlock2D``: one unit per *GroupNorm group* of the inner width
  (conv1 out / norm2 / conv2 in). Whole groups, because norm2 normalises over a group: dropping
  part of one would change the statistics of the channels kept, and the sliced model would no
  longer equal the masked one. The mask multiplies conv2's input.

A branch whose every unit is pruned computes a constant (its output projection's bias, spatially
broadcast), so it is replaced by that constant added to the residual, never by a pass-through
(``algorithms.md`` §3.7 pitfall).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dmc.errors import DmcError

GATED_ACTS = ("GEGLU", "SwiGLU")  # proj outputs [value; gate], both halves sliced alike
PLAIN_ACTS = ("GELU", "ApproximateGELU", "LinearActivation")


@dataclass
class Unit:
    """One maskable structure inside the model."""

    path: str  # module path, e.g. "down_blocks.1.attentions.0"
    kind: str
    units: int
    unit_width: int  # channels per unit
    params_per_unit: int
    removable: bool = True  # may all units go (the branch becomes a constant)?


def _linear(src: nn.Linear, rows=None, cols=None) -> nn.Linear:
    w = src.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=src.bias is not None, dtype=w.dtype)
    out.weight.data.copy_(w)
    if src.bias is not None:
        out.bias.data.copy_(src.bias.detach()[rows] if rows is not None else src.bias.detach())
    return out


def _conv(src: nn.Conv2d, out_idx=None, in_idx=None) -> nn.Conv2d:
    w = src.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    out = nn.Conv2d(w.shape[1], w.shape[0], src.kernel_size, src.stride, src.padding, src.dilation,
                    bias=src.bias is not None, dtype=w.dtype)
    out.weight.data.copy_(w)
    if src.bias is not None:
        out.bias.data.copy_(src.bias.detach()[out_idx] if out_idx is not None else src.bias.detach())
    return out


def _channels(keep: torch.Tensor, width: int) -> torch.Tensor:
    """Channel indices of kept units of ``width`` channels each."""
    return (keep[:, None] * width + torch.arange(width)[None]).reshape(-1)


def _bias_of(linear_or_conv) -> torch.Tensor:
    b = linear_or_conv.bias
    n = linear_or_conv.out_features if isinstance(linear_or_conv, nn.Linear) else linear_or_conv.out_channels
    return b.detach().clone() if b is not None else torch.zeros(n)


class ConstantAttention(nn.Module):
    """A fully pruned ``Attention``: ``to_out`` of zeros is its bias; residual and rescale as before."""

    def __init__(self, bias: torch.Tensor, residual: bool, rescale: float):
        super().__init__()
        self.register_buffer("bias", bias)
        self.residual, self.rescale = residual, rescale

    def forward(self, hidden_states, *args, **kwargs):
        b = self.bias.view(1, -1, 1, 1) if hidden_states.ndim == 4 else self.bias
        ref = hidden_states[:, :1] if hidden_states.ndim == 4 else hidden_states[..., :1]
        out = hidden_states + b if self.residual else torch.zeros_like(ref) + b
        return out / self.rescale


class ConstantFeedForward(nn.Module):
    """A fully pruned ``FeedForward``: its down-projection's bias, broadcast over tokens."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("bias", bias)

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states[..., :1]) + self.bias


class ConstantBranchResnet(nn.Module):
    """A ``ResnetBlock2D`` whose inner width is fully pruned: conv2's bias plus the shortcut."""

    def __init__(self, block):
        super().__init__()
        self.conv_shortcut = block.conv_shortcut
        self.register_buffer("bias", _bias_of(block.conv2).view(1, -1, 1, 1))
        self.output_scale_factor = block.output_scale_factor
        self.in_channels, self.out_channels = block.in_channels, block.out_channels

    def forward(self, input_tensor, temb=None, *args, **kwargs):
        x = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
        return (x + self.bias) / self.output_scale_factor


class Structure:
    kind = ""

    def match(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def describe(self, path: str, module: nn.Module) -> Unit:
        raise NotImplementedError

    def consumer(self, module: nn.Module) -> tuple[nn.Module, int]:
        """(submodule whose input the mask multiplies, channel dim of that input)."""
        raise NotImplementedError

    def magnitude(self, module: nn.Module, unit: Unit) -> torch.Tensor:
        """Mean |w| over the weights each unit controls (the L1 baseline's score)."""
        raise NotImplementedError

    def slice(self, module: nn.Module, keep: torch.Tensor) -> nn.Module:
        """The module with only units ``keep`` (sorted indices); a constant module if ``keep`` is empty."""
        raise NotImplementedError


class AttentionHeads(Structure):
    kind = "heads"

    def match(self, module):
        return (type(module).__name__ == "Attention" and isinstance(getattr(module, "to_q", None), nn.Linear)
                and getattr(module, "add_q_proj", None) is None and module.heads >= 1
                and isinstance(module.to_out[0], nn.Linear) and module.to_q.out_features % module.heads == 0
                and module.to_k.out_features == module.to_q.out_features)

    def describe(self, path, m):
        hd = m.to_q.out_features // m.heads
        per = hd * (m.to_q.in_features + m.to_k.in_features + m.to_v.in_features
                    + 3 * (m.to_q.bias is not None) + m.to_out[0].out_features)
        return Unit(path, self.kind, m.heads, hd, per)

    def consumer(self, m):
        return m.to_out[0], -1

    def magnitude(self, m, unit):
        hd = unit.unit_width
        parts = [w.detach().abs().reshape(m.heads, hd, -1).sum((1, 2)) for w in (m.to_q.weight, m.to_k.weight,
                                                                                 m.to_v.weight)]
        parts.append(m.to_out[0].weight.detach().abs().T.reshape(m.heads, hd, -1).sum((1, 2)))
        return sum(parts) / unit.params_per_unit

    def slice(self, m, keep):
        if len(keep) == 0:
            return ConstantAttention(_bias_of(m.to_out[0]), bool(m.residual_connection), float(m.rescale_output_factor))
        rows = _channels(keep, m.to_q.out_features // m.heads)
        m.to_q, m.to_k, m.to_v = _linear(m.to_q, rows), _linear(m.to_k, rows), _linear(m.to_v, rows)
        m.to_out[0] = _linear(m.to_out[0], cols=rows)
        m.heads = len(keep)
        m.inner_dim = m.inner_kv_dim = len(rows)
        return m


class FeedForwardNeurons(Structure):
    kind = "ffn"

    def match(self, module):
        if type(module).__name__ != "FeedForward":
            return False
        act, down = module.net[0], [n for n in module.net if isinstance(n, nn.Linear)]
        return type(act).__name__ in GATED_ACTS + PLAIN_ACTS and isinstance(getattr(act, "proj", None), nn.Linear) \
            and len(down) == 1

    @staticmethod
    def _down(m) -> int:
        return next(i for i, n in enumerate(m.net) if isinstance(n, nn.Linear))

    def describe(self, path, m):
        proj, down = m.net[0].proj, m.net[self._down(m)]
        gated = type(m.net[0]).__name__ in GATED_ACTS
        per = (1 + gated) * (proj.in_features + (proj.bias is not None)) + down.out_features
        return Unit(path, self.kind, down.in_features, 1, per)

    def consumer(self, m):
        return m.net[self._down(m)], -1

    def magnitude(self, m, unit):
        proj, down = m.net[0].proj, m.net[self._down(m)]
        w = proj.weight.detach().abs()
        inner = down.in_features
        up = w.reshape(2, inner, -1).sum((0, 2)) if w.shape[0] == 2 * inner else w.sum(1)
        return (up + down.weight.detach().abs().sum(0)) / unit.params_per_unit

    def slice(self, m, keep):
        i = self._down(m)
        down = m.net[i]
        if len(keep) == 0:
            return ConstantFeedForward(_bias_of(down))
        proj = m.net[0].proj
        rows = torch.cat([keep, keep + down.in_features]) if proj.out_features == 2 * down.in_features else keep
        m.net[0].proj = _linear(proj, rows)
        m.net[i] = _linear(down, cols=keep)
        return m


class ResnetGroups(Structure):
    kind = "resnet"

    def match(self, module):
        return (type(module).__name__ == "ResnetBlock2D" and isinstance(module.norm2, nn.GroupNorm)
                and module.time_embedding_norm in ("default", "scale_shift")
                and module.conv1.out_channels == module.conv2.in_channels
                and module.conv2.in_channels % module.norm2.num_groups == 0)

    def describe(self, path, m):
        gw = m.conv2.in_channels // m.norm2.num_groups
        c1, c2 = m.conv1, m.conv2
        k1 = c1.weight[0].numel()
        per_channel = k1 + (c1.bias is not None) + 2 * m.norm2.affine + c2.weight[:, 0].numel()
        if m.time_emb_proj is not None:
            per_channel += (1 + (m.time_embedding_norm == "scale_shift")) * (m.time_emb_proj.in_features + 1)
        # With an up/down sampler inside, the constant-branch form would need it too: keep one group.
        removable = m.upsample is None and m.downsample is None
        return Unit(path, self.kind, m.norm2.num_groups, gw, gw * per_channel, removable)

    def consumer(self, m):
        return m.conv2, 1

    def magnitude(self, m, unit):
        g = m.norm2.num_groups
        a = m.conv1.weight.detach().abs().reshape(g, -1).sum(1)
        b = m.conv2.weight.detach().abs().transpose(0, 1).reshape(g, -1).sum(1)
        return (a + b) / unit.params_per_unit

    def slice(self, m, keep):
        if len(keep) == 0:
            return ConstantBranchResnet(m)
        ch = _channels(keep, m.conv2.in_channels // m.norm2.num_groups)
        m.conv1 = _conv(m.conv1, out_idx=ch)
        if m.time_emb_proj is not None:
            inner = m.conv2.in_channels
            rows = torch.cat([ch, ch + inner]) if m.time_embedding_norm == "scale_shift" else ch
            m.time_emb_proj = _linear(m.time_emb_proj, rows)
        norm = nn.GroupNorm(len(keep), len(ch), eps=m.norm2.eps, affine=m.norm2.affine,
                            dtype=m.conv1.weight.dtype)
        if m.norm2.affine:
            norm.weight.data.copy_(m.norm2.weight.detach()[ch])
            norm.bias.data.copy_(m.norm2.bias.detach()[ch])
        m.norm2 = norm
        m.conv2 = _conv(m.conv2, in_idx=ch)
        return m


STRUCTURES: dict[str, Structure] = {s.kind: s for s in (AttentionHeads(), FeedForwardNeurons(), ResnetGroups())}
FAMILY_KINDS = {"unet": ("heads", "ffn", "resnet"), "dit": ("heads", "ffn")}


def find_units(model: nn.Module, family: str) -> list[Unit]:
    """Every maskable structure of ``model`` for its family, in module order."""
    if family not in FAMILY_KINDS:
        raise DmcError(f"--prune does not support the {family!r} family yet (supported: {', '.join(FAMILY_KINDS)})")
    kinds = [STRUCTURES[k] for k in FAMILY_KINDS[family]]
    found = []
    for path, module in model.named_modules():
        for s in kinds:
            if s.match(module):
                found.append(s.describe(path, module))
                break
    if not found:
        raise DmcError(f"--prune found nothing maskable in this {family} model")
    return found


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, nn.ModuleList):
        parent[int(name)] = new
    else:
        setattr(parent, name, new)
