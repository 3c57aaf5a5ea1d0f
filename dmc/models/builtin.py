"""The built-in demo models: small class-conditional generators of 16x16 digits.

Both are trained by ``scripts/train_demo.py`` on the ``train`` half of scikit-learn's
digits and shipped as safetensors (config in the file's metadata). Class index 10
is the null class used for classifier-free guidance.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
    # "leading" starts at t=950 rather than 999: at 999 the cosine schedule has alpha_bar ~ 1e-6, and
    # DPM-Solver++'s unclipped data prediction (x - sigma*eps)/alpha blows up there on a pixel model.
    "timestep_spacing": "leading",
}

DEMO_MODELS = {
    "demo": {
        "file": "demo_unet.safetensors",
        "class": "UNet2DModel",
        "config": {
            "sample_size": 16,
            "in_channels": 1,
            "out_channels": 1,
            "block_out_channels": [32, 64, 64],
            "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            "norm_num_groups": 8,
            "attention_head_dim": 32,
            "num_class_embeds": NUM_CLASSES + 1,
        },
    },
    "demo-dit": {
        "file": "demo_dit.safetensors",
        "class": "DiTTransformer2DModel",
        "config": {
            "sample_size": 16,
            "in_channels": 1,
            "out_channels": 1,
            "patch_size": 2,
            "num_layers": 6,
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "num_embeds_ada_norm": NUM_CLASSES,
        },
    },
}


# Not shipped (111 MB): the mid-size UNet of the benchmarks, trained by the user's own run of
# ``python scripts/train_demo.py --model mid --minutes 30 --out mid.safetensors`` on 64x64 RGB digits.
TRAINABLE_MODELS = {
    **DEMO_MODELS,
    "mid": {
        "file": None,
        "class": "UNet2DModel",
        "data": {"size": 64, "rgb": True},
        # the demo UNet's block layout, 4-6x wider, RGB at 64x64 (27.8 M parameters)
        "config": {**DEMO_MODELS["demo"]["config"], "sample_size": 64, "in_channels": 3, "out_channels": 3,
                   "block_out_channels": [128, 256, 384], "norm_num_groups": 32},
    },
}


def demo_path(name: str) -> Path:
    return WEIGHTS_DIR / DEMO_MODELS[name]["file"]
