"""The registry of architecture families: which configs dmc compiles, how, and with which passes.

A family is a config predicate plus an adapter class (``Family``). ``resolve`` picks the family
from what a config and its tensors say, not from one class-name string: the hub's
``Transformer2DModel`` configs become DiT (``norm_type`` ada_norm_zero, class labels) or PixArt
(ada_norm_single, caption projection), a ``UNet2DConditionModel`` is SD 1.x/2.x or SDXL
(``addition_embed_type`` text_time). ``supports`` is the family's capability table: for each
pass stage, True or the one-line reason it does not work yet, checked before any work is done.

Adding a family = one ``Family(...)`` entry in ``FAMILIES`` and its adapter; nothing else branches
on architecture names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection

from dmc.errors import DmcError
from dmc.models.families import mmdit, transformer2d, unet

PASS_FLAGS = {"cache": "--cache", "quantize": "--int8"}


@dataclass(frozen=True)
class Family:
    name: str  # registry key; the manifest's model.architecture
    title: str  # for people: messages and the README table
    model_class: str  # the diffusers class that is instantiated
    config_classes: tuple[str, ...]  # `_class_name` values of config.json this family may claim
    adapter: type  # an Adapter subclass: adapter(model, resolution)
    requires: str = ""  # what `matches` looks for, said in refusals
    matches: Callable[[dict, Collection[str]], bool] = lambda config, names: True  # (config, tensor names)
    detect: Callable[[Collection[str]], bool] | None = None  # bare checkpoint: do the tensor names say so?
    supports: dict = field(default_factory=dict)  # "cache" / "quantize" / "cache+quantize" -> True | reason

    def unsupported(self, stages: Collection[str]) -> str | None:
        """The reason the first requested stage (or the requested combination) cannot run, else None."""
        keys = [s for s in ("cache", "quantize") if s in stages]
        if len(keys) == 2:
            keys.append("cache+quantize")
        for key in keys:
            verdict = self.supports.get(key, True if key == "cache+quantize" else "not tried yet")
            if verdict is not True:
                flags = " ".join(PASS_FLAGS[k] for k in key.split("+"))
                return f"{flags} is not supported for {self.title} yet: {verdict}"
        return None


def _has(names: Collection[str], fragment: str) -> bool:
    return any(fragment in n for n in names)


FAMILIES: tuple[Family, ...] = (
    Family("unet", "pixel UNet (UNet2DModel)", "UNet2DModel", ("UNet2DModel",), unet.UNet2DAdapter,
           detect=lambda n: "conv_in.weight" in n and "time_embedding.linear_1.weight" in n
           and not _has(n, ".attn2.to_k.weight"),
           supports={"cache": True, "quantize": True}),
    Family("sd", "Stable Diffusion 1.x/2.x UNet", "UNet2DConditionModel", ("UNet2DConditionModel",),
           unet.SDUNetAdapter, requires="no added conditioning (addition_embed_type, class embeddings unset)",
           matches=lambda c, n: not unet.extra_conditioning(c),
           detect=lambda n: "conv_in.weight" in n and _has(n, ".attn2.to_k.weight") and not _has(n, "add_embedding."),
           supports={"cache": True, "quantize": True}),
    Family("sdxl", "SDXL UNet", "UNet2DConditionModel", ("UNet2DConditionModel",), unet.SDXLUNetAdapter,
           requires="addition_embed_type 'text_time' (text_embeds, time_ids)",
           matches=lambda c, n: unet.extra_conditioning(c) == ["addition_embed_type=text_time"],
           detect=lambda n: "conv_in.weight" in n and _has(n, "add_embedding.linear_1."),
           supports={"cache": "DeepCache's partial graphs do not feed the text_time embedding "
                              "(text_embeds, time_ids) yet",
                     "quantize": True}),
    Family("dit", "DiT (DiT-XL/2)", "DiTTransformer2DModel", ("DiTTransformer2DModel", "Transformer2DModel"),
           transformer2d.DiTAdapter, requires="norm_type 'ada_norm_zero' with class labels (num_embeds_ada_norm)",
           matches=transformer2d.is_dit, detect=lambda n: _has(n, ".norm1.emb.class_embedder."),
           supports={"cache": True, "quantize": True}),
    Family("pixart", "PixArt-α/Σ", "PixArtTransformer2DModel", ("PixArtTransformer2DModel", "Transformer2DModel"),
           transformer2d.PixArtAdapter, requires="norm_type 'ada_norm_single' with a caption projection "
                                                 "(caption_channels)",
           matches=transformer2d.is_pixart, detect=lambda n: _has(n, "adaln_single."),
           supports={"cache": "block caching covers DiT's ada_norm_zero blocks; PixArt's ada_norm_single blocks "
                              "with cross-attention are not re-implemented for caching",
                     "quantize": True}),
    Family("sd3", "Stable Diffusion 3 (MM-DiT)", "SD3Transformer2DModel", ("SD3Transformer2DModel",),
           mmdit.SD3Adapter, detect=lambda n: "context_embedder.weight" in n and "pos_embed.proj.weight" in n,
           supports={"cache": "no block-caching graphs for joint-attention (MM-DiT) blocks yet",
                     "quantize": True}),
    Family("flux", "Flux", "FluxTransformer2DModel", ("FluxTransformer2DModel",), mmdit.FluxAdapter,
           detect=lambda n: "x_embedder.weight" in n and _has(n, "single_transformer_blocks."),
           supports={"cache": "no block-caching graphs for Flux's double/single-stream blocks yet",
                     "quantize": True}),
)


def supported_classes() -> str:
    """One line naming every accepted config class and what it resolves to."""
    by_class: dict[str, list[str]] = {}
    for fam in FAMILIES:
        for cls in fam.config_classes:
            by_class.setdefault(cls, []).append(fam.title)
    return "; ".join(f"{cls} ({', '.join(titles)})" for cls, titles in by_class.items())


def resolve(class_name: str, config: dict, tensor_names: Collection[str], source: str = "model") -> Family:
    """The one family that claims ``class_name`` and whose predicate accepts this config and these tensors."""
    claiming = [f for f in FAMILIES if class_name in f.config_classes]
    if not claiming:
        raise DmcError(f"{source}: architecture {class_name!r} is not supported (supported: {supported_classes()})")
    found = [f for f in claiming if f.matches(config, tensor_names)]
    if len(found) == 1:
        return found[0]
    if not found:
        needs = "; ".join(f"{f.title} needs {f.requires}" for f in claiming)
        raise DmcError(f"{source}: this {class_name} config matches no supported family ({needs})")
    raise DmcError(f"{source}: {class_name} config is ambiguous ({', '.join(f.title for f in found)}); "
                   "set norm_type in its config")


def detect(tensor_names: Collection[str]) -> Family | None:
    """The family a bare checkpoint's tensor names point to (None when none does, or several do)."""
    found = [f for f in FAMILIES if f.detect is not None and f.detect(tensor_names)]
    return found[0] if len(found) == 1 else None


def family_of_model(model) -> Family:
    """The family of an instantiated diffusers model (its class and config decide)."""
    cls = type(model).__name__
    config = dict(model.config)
    names = [k for k, _ in model.named_parameters()]
    return resolve(cls, config, names, cls)


def refuse_unsupported_passes(family: Family, pass_configs: list) -> None:
    """Before any work: one line naming the first requested pass (or combination) this family lacks."""
    from dmc.compress.passes import stage_of

    reason = family.unsupported({stage_of(cfg) for cfg in pass_configs})
    if reason:
        raise DmcError(reason)


def by_name(name: str) -> Family:
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise KeyError(name)


__all__ = ["Family", "FAMILIES", "resolve", "detect", "family_of_model", "by_name", "supported_classes",
           "refuse_unsupported_passes"]
