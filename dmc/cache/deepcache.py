"""DeepCache for diffusers ``UNet2DModel`` and ``UNet2DConditionModel`` (``algorithms.md`` §4; CacheQuant §5).

Two graphs replace the single full graph:

- **full** ``(sample, timestep[, cond]) -> (prediction, cache.deep)``: the whole network,
  also returning the deep decoder feature at skip branch ``b`` — the input of
  ``up_blocks[-1-b]``, i.e. the output of ``up_blocks[-2-b]`` that the shallow decoder
  concatenates with fresh skip features.
- **shallow** ``(sample, timestep[, cond], cache.deep[, cache.scale, cache.shift]) -> prediction``:
  conv_in, the time (+class) embedding, down blocks ``0..b`` (without the downsampler of block b,
  whose output only feeds the skipped deep path), the cached feature (optionally corrected per
  channel: ``scale * cache + shift``, CacheQuant's DEC a1/b1), the last ``b+1`` up blocks and conv_out.

Both modules hold the adapter's diffusers model as ``self.model``, so their parameters (and
the ONNX initializers of their exports) carry the same names as the full graph's
(``model.up_blocks.2.resnets.0.conv1.weight``): the quantize pass matches layers by that name.

Graph inputs are positional and named by ``input_names``. The runtime's Pipeline stores every
non-prediction output of a graph under its name and feeds it to later graphs with an input of
that name, so a refresh call's ``cache.deep`` reaches the following shallow calls. Under
classifier-free guidance the batch is [uncond; cond], and the cached tensor has the same
layout: each guidance half keeps its own cache. ``cond`` is ``class_labels`` (UNet2DModel) or
``encoder_hidden_states`` (UNet2DConditionModel), as the adapter names it.
"""

from __future__ import annotations

import torch
from torch import nn

from dmc.errors import DmcError

CACHE = "cache.deep"
SCALE = "cache.scale"
SHIFT = "cache.shift"
PREDICTION = "prediction"
KNOWN_DOWN = ("DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D")
SUPPORTED = ("UNet2DModel", "UNet2DConditionModel")


def check_unet(model, branch: int) -> None:
    """Refuse UNet configurations the cached graphs do not reproduce exactly."""
    kind = type(model).__name__
    if kind not in SUPPORTED:
        raise DmcError(f"DeepCache supports {', '.join(SUPPORTED)}, not {kind}")
    blocks = list(model.down_blocks) + list(model.up_blocks)
    if any(hasattr(b, "skip_conv") for b in blocks):
        raise DmcError("--cache does not support UNet2DModel skip blocks (SkipDownBlock2D/AttnSkip*); "
                       "compile without --cache")
    if kind == "UNet2DConditionModel":
        cfg = model.config
        extra = [k for k in ("class_embed_type", "addition_embed_type", "num_class_embeds") if cfg.get(k)]
        if model.class_embedding is not None or extra:
            raise DmcError(f"--cache: UNet2DConditionModel with extra conditioning ({', '.join(extra) or 'class'}) "
                           "is not supported")
    top = len(model.up_blocks) - 2
    if top < 0:
        raise DmcError("--cache needs a UNet with at least two up blocks")
    if not 0 <= branch <= top:
        raise DmcError(f"cache branch {branch} is out of range for this UNet (0..{top})")


def cache_channels(model, branch: int) -> int:
    """Channels of the cached feature: the output of ``up_blocks[-2-branch]``."""
    return int(model.up_blocks[-2 - branch].resnets[-1].out_channels)


def cache_point(model, branch: int) -> nn.Module:
    """The module whose output is the cached feature (hook it to record features)."""
    return model.up_blocks[-2 - branch]


class _UNetOps:
    """The pieces of one UNet forward, written as diffusers writes them for this model class, so
    the full module is bit-identical to the model and the shallow one reuses the same code."""

    def __init__(self, model, x: dict, in_channels: int):
        self.m = model
        self.cond = type(model).__name__ == "UNet2DConditionModel"
        self.in_channels = in_channels
        self.ehs = x.get("encoder_hidden_states")
        self.labels = x.get("class_labels")
        self.upsample_size = None
        self.forward_upsample_size = False

    def embed(self, sample, timestep):
        """(sample after input centring, time/class embedding); also prepares the text states."""
        m = self.m
        if self.cond:
            factor = 2 ** m.num_upsamplers
            self.forward_upsample_size = any(d % factor != 0 for d in sample.shape[-2:])
        if m.config.center_input_sample:
            sample = 2 * sample - 1.0
        if self.cond:
            emb = m.time_embedding(m.get_time_embed(sample=sample, timestep=timestep), None)
            if m.time_embed_act is not None:
                emb = m.time_embed_act(emb)
            self.ehs = m.process_encoder_hidden_states(encoder_hidden_states=self.ehs, added_cond_kwargs={})
            return sample, emb
        timesteps = timestep
        if timesteps.dim() == 0:
            timesteps = timesteps[None]
        timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=timesteps.device)
        self.timesteps = timesteps
        emb = m.time_embedding(m.time_proj(timesteps).to(dtype=m.dtype))
        if m.class_embedding is not None:
            labels = self.labels
            if labels is None:
                raise ValueError("class_labels should be provided when doing class conditioning")
            if m.config.class_embed_type == "timestep":
                labels = m.time_proj(labels)
            emb = emb + m.class_embedding(labels).to(dtype=m.dtype)
        return sample, emb

    def _xattn(self, block) -> dict:
        if self.cond and getattr(block, "has_cross_attention", False):
            return {"encoder_hidden_states": self.ehs, "attention_mask": None, "cross_attention_kwargs": None,
                    "encoder_attention_mask": None}
        return {}

    def down(self, block, h, emb, downsample: bool = True):
        if downsample:
            return block(hidden_states=h, temb=emb, **self._xattn(block))
        # the block's resnet (+attention) outputs only: its downsampler feeds the skipped deep path
        kind = type(block).__name__
        if kind in KNOWN_DOWN:
            states = ()
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn in zip(block.resnets, attentions):
                h = resnet(h, emb)
                if attn is not None:
                    h = attn(h) if kind != "CrossAttnDownBlock2D" else attn(
                        h, **self._xattn(block), return_dict=False)[0]
                states += (h,)
            return h, states
        h, states = block(hidden_states=h, temb=emb, **self._xattn(block))  # unknown: run whole, drop the extra
        return h, (states[:-1] if getattr(block, "downsamplers", None) is not None else states)

    def mid(self, h, emb):
        if self.m.mid_block is None:
            return h
        return self.m.mid_block(h, emb, **self._xattn(self.m.mid_block))

    def up(self, first: int, last: int, h, stack, emb):
        """Run ``up_blocks[first:last]`` popping skip features from ``stack``."""
        blocks = self.m.up_blocks
        for i in range(first, last):
            block = blocks[i]
            res = stack[-len(block.resnets):]
            stack = stack[: -len(block.resnets)]
            if not self.cond:
                h = block(h, res, emb)
                continue
            if i != len(blocks) - 1 and self.forward_upsample_size:
                self.upsample_size = stack[-1].shape[2:]
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=self.upsample_size,
                      **self._xattn(block))
        return h, stack

    def head(self, h):
        m = self.m
        if self.cond:
            if m.conv_norm_out:
                h = m.conv_act(m.conv_norm_out(h))
            h = m.conv_out(h)
        else:
            h = m.conv_out(m.conv_act(m.conv_norm_out(h)))
            if m.config.time_embedding_type == "fourier":
                h = h / self.timesteps.reshape((h.shape[0], *([1] * len(h.shape[1:]))))
        return h[:, : self.in_channels] if h.shape[1] != self.in_channels else h


class _Part(nn.Module):
    """Shared plumbing: ``self.model`` is the adapter's model; inputs arrive positionally in
    ``input_names`` order (ONNX names such as "cache.deep" are not Python identifiers)."""

    def __init__(self, adapter, branch: int, input_names: list[str], output_names: list[str]):
        super().__init__()
        check_unet(adapter.model, branch)
        self.model = adapter.model
        self.branch = branch
        self.in_channels = adapter.in_channels
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.eval()

    def _named(self, args) -> dict:
        given = [a for a in args if a is not None]
        if len(given) != len(self.input_names):
            raise TypeError(f"expected inputs {self.input_names}, got {len(given)} tensors")
        return dict(zip(self.input_names, given))


class DeepCacheFull(_Part):
    """The whole UNet; returns ``(prediction, cache.deep)``."""

    def __init__(self, adapter, branch: int = 0):
        super().__init__(adapter, branch, adapter.input_names, [PREDICTION, CACHE])

    def forward(self, sample, timestep, in2=None):
        x = self._named((sample, timestep, in2))
        ops = _UNetOps(self.model, x, self.in_channels)
        sample, emb = ops.embed(x["sample"], x["timestep"])
        h = self.model.conv_in(sample)
        stack = (h,)
        for block in self.model.down_blocks:
            h, res = ops.down(block, h, emb)
            stack += res
        h = ops.mid(h, emb)
        n_up = len(self.model.up_blocks)
        split = n_up - 1 - self.branch
        h, stack = ops.up(0, split, h, stack, emb)
        cache = h
        h, _ = ops.up(split, n_up, h, stack, emb)
        return ops.head(h), cache


class DeepCacheShallow(_Part):
    """A retrieve step: shallow encoder + the cached deep feature + the shallow decoder."""

    def __init__(self, adapter, branch: int = 0, correction: bool = True):
        names = adapter.input_names + [CACHE] + ([SCALE, SHIFT] if correction else [])
        super().__init__(adapter, branch, names, [PREDICTION])
        self.correction = correction

    def forward(self, sample, timestep, in2=None, in3=None, in4=None, in5=None):
        x = self._named((sample, timestep, in2, in3, in4, in5))
        m = self.model
        ops = _UNetOps(m, x, self.in_channels)
        sample, emb = ops.embed(x["sample"], x["timestep"])
        h = m.conv_in(sample)
        stack = (h,)
        for i in range(self.branch + 1):
            h, res = ops.down(m.down_blocks[i], h, emb, downsample=i < self.branch)
            stack += res
        n_up = len(m.up_blocks)
        split = n_up - 1 - self.branch
        need = sum(len(b.resnets) for b in m.up_blocks[split:])
        if len(stack) != need:  # static: checked while tracing
            raise DmcError("DeepCache: shallow encoder and decoder disagree on skip features "
                           f"({len(stack)} vs {need}); unsupported UNet layout")
        cache = x[CACHE]
        if self.correction:
            cache = cache * x[SCALE].reshape(1, -1, 1, 1) + x[SHIFT].reshape(1, -1, 1, 1)
        h, _ = ops.up(split, n_up, cache, stack, emb)
        return ops.head(h)


def example_inputs(adapter, sample_shape, batch: int = 2) -> tuple:
    ex = adapter.example_inputs(batch)
    return (torch.randn(batch, *sample_shape),) + tuple(ex[1:])


def count_macs(module: nn.Module, inputs: tuple) -> int:
    """Multiply-accumulates of one forward (convs, matmuls, attention), via torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops() // 2)


def build_modules(adapter, sample_shape, branch: int, correction: bool):
    """The two torch modules plus example inputs for each (batch 2) and MACs per image."""
    full = DeepCacheFull(adapter, branch)
    shallow = DeepCacheShallow(adapter, branch, correction)
    ex_full = example_inputs(adapter, sample_shape, 2)
    with torch.inference_mode():
        _, cache = full(*ex_full)
    c = cache.shape[1]
    ex_shallow = ex_full + (cache.clone(),) + ((torch.ones(c), torch.zeros(c)) if correction else ())
    one_full = tuple(t[:1] for t in ex_full)
    one_shallow = tuple(t[:1] for t in ex_full) + (cache[:1].clone(),) + ex_shallow[len(ex_full) + 1:]
    macs = {"full": count_macs(full, one_full), "shallow": count_macs(shallow, one_shallow)}
    return full, shallow, ex_full, ex_shallow, macs


def separate_output(model, name: str = CACHE):
    """Give the exported graph output ``name`` its own Identity node.

    The exporter names the producing layer's output tensor after the graph output, so the cached
    feature is also an internal activation (it feeds the last up blocks). Quantization tools
    rewrite such tensors (ONNX Runtime renames them ``<name>_QuantizeLinear_Input``), which breaks
    matching activations by name. With ``<name>.value`` inside and ``Identity -> <name>`` at the
    output, the layer output is an ordinary internal tensor. After INT8 the Identity reads the
    dequantized activation, so the cache is stored in float and each shallow graph quantizes it at
    its own input with its own scale (``algorithms.md`` §10.2 item 4, CacheQuant's choice).
    """
    import onnx
    from onnx import helper

    from dmc.export.external import copy_model

    out = copy_model(model)  # no serialization: any size
    inner = f"{name}.value"
    for node in out.graph.node:
        for i, x in enumerate(node.output):
            if x == name:
                node.output[i] = inner
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = inner
    out.graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}.output"))
    return out
