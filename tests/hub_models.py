"""Tiny random-weight versions of every supported architecture, saved the way the hub lays them out.

Configs keep the published models' structure and switches (SD 2.x's linear projection and upcast
attention, SDXL's text_time embedding, DiT-XL/2's and PixArt's ``Transformer2DModel`` configs with
their learned sigma, PixArt's additional conditions, SD3's joint blocks, Flux's guidance embedding)
at widths that export in seconds. Layouts:

- ``pipeline``: ``<root>/<sub>/{config.json, diffusion_pytorch_model.safetensors}`` +
  ``<root>/scheduler/scheduler_config.json`` (``<sub>`` = ``unet`` or ``transformer``)
- ``folder``: the bare ``<sub>`` folder
- ``file``: one ``.safetensors`` with a sidecar ``.json`` config

The scheduler is DDIM with the model's published beta schedule: the architecture tests do not depend on
the flow-matching samplers (schedulers are tested on their own).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

SD_SCHEDULE = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
               "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "epsilon", "clip_sample": False,
               "set_alpha_to_one": False, "steps_offset": 1}
LINEAR_SCHEDULE = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
                   "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": False}

TINY_UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
             "block_out_channels": [8, 16], "norm_num_groups": 4,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}


@dataclass(frozen=True)
class HubModel:
    name: str  # dmc family name it must resolve to
    diffusers_class: str  # what the model is built with
    config_class: str  # `_class_name` written to config.json (the hub's, e.g. Transformer2DModel)
    config: dict
    sub: str  # pipeline subfolder
    schedule: dict
    resolution: tuple[int, int] | None = None  # recipe resolution (Flux has no sample_size)


HUB_MODELS = {
    "sd": HubModel("sd", "UNet2DConditionModel", "UNet2DConditionModel",
                   {**TINY_UNET, "cross_attention_dim": 16, "attention_head_dim": 4}, "unet", SD_SCHEDULE),
    # SD 2.x: linear projections in the transformer blocks, attention upcast, v-prediction
    "sd2": HubModel("sd", "UNet2DConditionModel", "UNet2DConditionModel",
                    {**TINY_UNET, "cross_attention_dim": 24, "attention_head_dim": [2, 4],
                     "use_linear_projection": True, "upcast_attention": True}, "unet",
                    {**SD_SCHEDULE, "prediction_type": "v_prediction"}),
    "sdxl": HubModel("sdxl", "UNet2DConditionModel", "UNet2DConditionModel",
                     {**TINY_UNET, "cross_attention_dim": 16, "attention_head_dim": [2, 4],
                      "use_linear_projection": True, "addition_embed_type": "text_time",
                      "addition_time_embed_dim": 4, "projection_class_embeddings_input_dim": 12 + 6 * 4,
                      "transformer_layers_per_block": [1, 2],
                      "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                      "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}, "unet", SD_SCHEDULE),
    # DiT-XL/2 as published: class Transformer2DModel, ada_norm_zero, learned sigma (out = 2 x in)
    "dit": HubModel("dit", "DiTTransformer2DModel", "Transformer2DModel",
                    {"sample_size": 8, "in_channels": 4, "out_channels": 8, "patch_size": 2, "num_layers": 2,
                     "num_attention_heads": 2, "attention_head_dim": 8, "num_embeds_ada_norm": 10,
                     "norm_type": "ada_norm_zero", "norm_elementwise_affine": False, "activation_fn": "gelu-approximate",
                     "attention_bias": True, "upcast_attention": False}, "transformer", LINEAR_SCHEDULE),
    # PixArt-α 1024 as published: Transformer2DModel, ada_norm_single, caption projection; the 1024-px models
    # turn on the resolution/aspect-ratio conditions
    "pixart": HubModel("pixart", "PixArtTransformer2DModel", "Transformer2DModel",
                       {"sample_size": 8, "in_channels": 4, "out_channels": 8, "patch_size": 2, "num_layers": 2,
                        "num_attention_heads": 2, "attention_head_dim": 12, "cross_attention_dim": 24,
                        "caption_channels": 12, "norm_type": "ada_norm_single", "num_embeds_ada_norm": 1000,
                        "norm_elementwise_affine": False, "norm_eps": 1e-6, "use_additional_conditions": True,
                        "activation_fn": "gelu-approximate", "attention_bias": True}, "transformer", SD_SCHEDULE),
    "sd3": HubModel("sd3", "SD3Transformer2DModel", "SD3Transformer2DModel",
                    {"sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 2,
                     "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 12,
                     "caption_projection_dim": 16, "pooled_projection_dim": 10, "pos_embed_max_size": 16,
                     "qk_norm": "rms_norm", "dual_attention_layers": [0]}, "transformer", SD_SCHEDULE),
    "flux": HubModel("flux", "FluxTransformer2DModel", "FluxTransformer2DModel",
                     {"patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 1,
                      "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 12,
                      "pooled_projection_dim": 10, "guidance_embeds": True, "axes_dims_rope": [2, 2, 4]},
                     "transformer", SD_SCHEDULE, resolution=(8, 8)),
}


def build_model(spec: HubModel, seed: int = 0):
    import diffusers

    torch.manual_seed(seed)
    # diffusers' own random initialisation: realistic activation ranges for INT8 (the FP32 tests check that
    # every condition reaches the output, which a zero-initialised layer would block)
    return getattr(diffusers, spec.diffusers_class).from_config(spec.config).eval()


def save_layouts(key: str, root: Path) -> dict[str, Path]:
    """Write the three layouts of ``HUB_MODELS[key]`` under ``root``; returns {layout: path}."""
    from safetensors.torch import save_file

    spec = HUB_MODELS[key]
    model = build_model(spec)
    pipe = root / key
    model.save_pretrained(pipe / spec.sub, safe_serialization=True)
    cfg_path = pipe / spec.sub / "config.json"
    config = json.loads(cfg_path.read_text())
    config["_class_name"] = spec.config_class  # e.g. the hub's Transformer2DModel for DiT/PixArt
    cfg_path.write_text(json.dumps(config, indent=2))
    (pipe / "scheduler").mkdir(parents=True, exist_ok=True)
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(spec.schedule))
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "DiffusionPipeline", spec.sub: [
        "diffusers", spec.config_class]}))
    folder = root / f"{key}-folder"
    shutil.copytree(pipe / spec.sub, folder)
    single = root / f"{key}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(single))
    single.with_suffix(".json").write_text(json.dumps(config))
    return {"pipeline": pipe, "folder": folder, "file": single}
