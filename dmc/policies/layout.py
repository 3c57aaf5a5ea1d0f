"""Write a diffusion policy folder in LeRobot's saved layout from dmc's own modules.

For benchmarks and tests at sizes no fixture ships (PushT's defaults hold a 263 M-parameter UNet),
and for policies dmc trains itself: ``config.json`` with LeRobot's keys, ``model.safetensors``
under ``diffusion.``, and the pre/post-processor files with the normaliser's statistics, exactly
what ``read_policy`` reads (and what LeRobot writes; ``tests/test_policies.py`` checks that
reading against folders LeRobot itself saved).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# LeRobot 0.4's DiffusionConfig defaults for the keys dmc reads (PushT-sized)
DEFAULTS = {"type": "diffusion", "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8,
            "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"},
            "vision_backbone": "resnet18", "resize_shape": None, "crop_shape": None, "use_group_norm": True,
            "spatial_softmax_num_keypoints": 32, "use_separate_rgb_encoder_per_camera": False,
            "down_dims": [512, 1024, 2048], "kernel_size": 5, "n_groups": 8, "diffusion_step_embed_dim": 128,
            "use_film_scale_modulation": True, "noise_scheduler_type": "DDPM", "num_train_timesteps": 100,
            "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02,
            "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0,
            "num_inference_steps": None}
UNET_KEYS = ("down_dims", "kernel_size", "n_groups", "diffusion_step_embed_dim", "use_film_scale_modulation")
# Diffusion Policy's transformer (DP-T) at its image-config size, for ``noise_net="transformer"``
TRANSFORMER_DEFAULTS = {"n_layer": 8, "n_head": 4, "n_emb": 256, "causal_attn": True, "n_cond_layers": 0,
                        "p_drop_emb": 0.0, "p_drop_attn": 0.3}


def write_policy(folder: str | Path, inputs: dict[str, tuple[str, tuple]], action_dim: int,
                 stats: dict[str, dict[str, np.ndarray]], state_dict: dict | None = None, seed: int = 0,
                 **config) -> Path:
    """``inputs``: key -> (LeRobot feature type, shape). ``stats``: key -> {stat: array} for every
    input and ``action``. ``state_dict``: weights under ``diffusion.`` (default: dmc's modules,
    randomly initialised with ``seed``)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = dict(DEFAULTS)
    if config.get("noise_net") == "transformer":  # the UNet's sizes mean nothing to DP-T
        base = {k: v for k, v in base.items() if k not in UNET_KEYS} | TRANSFORMER_DEFAULTS
    cfg = {**base, **config,
           "input_features": {k: {"type": t, "shape": list(s)} for k, (t, s) in inputs.items()},
           "output_features": {"action": {"type": "ACTION", "shape": [action_dim]}}}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    flat = {f"{k}.{name}": torch.from_numpy(np.asarray(v, np.float32))
            for k, s in stats.items() for name, v in s.items()}
    for side, step, name in (("preprocessor", 3, "normalizer_processor"),
                             ("postprocessor", 0, "unnormalizer_processor")):
        state_file = f"policy_{side}_step_{step}_{name}.safetensors"
        save_file(flat, str(folder / state_file))
        (folder / f"policy_{side}.json").write_text(json.dumps({"name": f"policy_{side}", "steps": [
            {"registry_name": name, "config": {"eps": 1e-8, "norm_map": cfg["normalization_mapping"]},
             "state_file": state_file}]}, indent=1))
    if state_dict is None:
        state_dict = random_weights(folder, seed)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
    return folder


def random_weights(folder: Path, seed: int) -> dict:
    """dmc's modules for the config at ``folder``, freshly initialised, under LeRobot's names."""
    import torch

    from dmc.policies.lerobot import NOISE_NETS, read_policy_config
    from dmc.policies.model import build_network
    from dmc.policies.vision import RgbEncoder

    torch.manual_seed(seed)
    spec = read_policy_config(folder)
    prefix = NOISE_NETS[spec.noise_net].prefix
    weights = {prefix + k: v for k, v in build_network(spec).state_dict().items()}
    c = spec.config
    if spec.images:
        separate = bool(c.get("use_separate_rgb_encoder_per_camera"))
        crop = tuple(c["crop_shape"]) if c.get("crop_shape") else None
        for i in range(len(spec.images) if separate else 1):
            enc = RgbEncoder(c.get("vision_backbone", "resnet18"), spec.images[0].shape, crop,
                             int(c.get("spatial_softmax_num_keypoints", 32)), bool(c.get("use_group_norm", True)))
            prefix = f"diffusion.rgb_encoder.{i}." if separate else "diffusion.rgb_encoder."
            weights.update({prefix + k: v for k, v in enc.state_dict().items()})
    return weights
