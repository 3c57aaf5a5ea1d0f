"""UNet families: pixel ``UNet2DModel``, SD 1.x/2.x and SDXL ``UNet2DConditionModel``.

SD 1.x/2.x differ only in config (cross_attention_dim 768/1024, ``use_linear_projection``,
``upcast_attention``), which diffusers' UNet implements itself; the adapter feeds the text
states. SDXL adds the ``text_time`` embedding: the pooled text embedding ``text_embeds`` and
the six size/crop numbers ``time_ids`` (five with the refiner's aesthetic score), passed as
``added_cond_kwargs`` exactly as ``StableDiffusionXLPipeline`` does.
"""

from __future__ import annotations

from dmc.models.adapters import Adapter, CondInput, Conditioning, class_conditioning, text_conditioning

SD_TOKENS = 77  # CLIP's context length
SDXL_POOLED_DIM = 1280  # OpenCLIP ViT-bigG projection, the pooled text_embeds of SDXL base and refiner


def extra_conditioning(config: dict) -> list[str]:
    """Conditioning a UNet2DConditionModel config adds beyond text states, as ``key=value`` strings."""
    keys = ("addition_embed_type", "class_embed_type", "num_class_embeds", "encoder_hid_dim_type",
            "time_cond_proj_dim")
    return [f"{k}={config[k]}" for k in keys if config.get(k) is not None]


class UNet2DAdapter(Adapter):
    """Pixel-space ``UNet2DModel``, unconditional or class-conditional (the last class is the null class)."""

    family = "unet"

    def __init__(self, model, resolution=None):
        super().__init__(model, resolution)
        self.num_class_embeds = model.config.num_class_embeds

    def conditioning(self) -> Conditioning:
        if not self.num_class_embeds:
            return Conditioning("none")
        # Convention (the demo follows it): the last class embedding is the null class.
        return class_conditioning(self.num_class_embeds - 1, self.num_class_embeds - 1)

    def forward(self, sample, timestep, class_labels=None):
        return self._pred(self.model(sample, timestep, class_labels=class_labels, return_dict=False)[0])


class SDUNetAdapter(Adapter):
    """SD 1.x/2.x: ``encoder_hidden_states [77, cross_attention_dim]``."""

    family = "unet"
    tokens = SD_TOKENS

    def text_dim(self) -> int:
        dim = self.model.config.cross_attention_dim
        return dim if isinstance(dim, int) else dim[0]

    def conditioning(self) -> Conditioning:
        return text_conditioning(self.tokens, self.text_dim())

    def forward(self, sample, timestep, encoder_hidden_states):
        out = self.model(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        return self._pred(out)


def sdxl_split(config: dict) -> tuple[int, int]:
    """(pooled text dim, number of time ids) of a text_time UNet.

    The add embedding's input is ``pooled + n * addition_time_embed_dim``; base (2816 = 1280 + 6*256) and
    refiner (2560 = 1280 + 5*256) both have a 1280-wide pooled embedding. A config that does not fit that
    (a resized model) is read as six time ids, the base model's layout.
    """
    total = config["projection_class_embeddings_input_dim"]
    step = config["addition_time_embed_dim"]
    rest = total - SDXL_POOLED_DIM
    if rest > 0 and rest % step == 0 and rest // step in (5, 6):
        return SDXL_POOLED_DIM, rest // step
    return total - 6 * step, 6


class SDXLUNetAdapter(SDUNetAdapter):
    """SDXL: text states plus ``text_embeds [1280]`` and ``time_ids [6]`` (``added_cond_kwargs``)."""

    def conditioning(self) -> Conditioning:
        pooled, n_ids = sdxl_split(dict(self.model.config))
        h, w = self.pixel_size
        # original size, crop top-left, target size; the refiner replaces the target size by an aesthetic score
        ids = [h, w, 0, 0, h, w] if n_ids == 6 else [h, w, 0, 0, 6.0]
        return text_conditioning(self.tokens, self.text_dim(), CondInput("text_embeds", (pooled,)),
                                 CondInput("time_ids", (n_ids,), uncond="same", default=[float(v) for v in ids]))

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        out = self.model(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}, return_dict=False)[0]
        return self._pred(out)
