"""Guess the config of a bare checkpoint from its tensor names and shapes (the family itself is
detected by ``dmc.models.families.detect``).

Some hyper-parameters leave no trace in the weights (head count, GroupNorm groups, the
training resolution). Those are filled with the usual defaults and listed in
``assumptions`` so the caller can warn and record them; ``--config`` overrides them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Detection:
    class_name: str
    config: dict
    assumptions: list[str] = field(default_factory=list)


def _count(shapes: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for n in shapes if (m := rx.match(n))})


def _head_dim(width: int) -> int:
    return next((d for d in (64, 72, 32, 16, 8) if width % d == 0), width)


def infer_dit(shapes: dict) -> Detection:
    inner, in_ch, p, _ = shapes["pos_embed.proj.weight"]
    out_rows = shapes["proj_out_2.weight"][0]
    classes = shapes["transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"][0] - 1
    head_dim = _head_dim(inner)
    cfg = {
        "in_channels": in_ch,
        "out_channels": out_rows // (p * p),
        "patch_size": p,
        "num_layers": _count(shapes, r"transformer_blocks\.(\d+)\."),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "num_embeds_ada_norm": classes,
        "sample_size": 32,
    }
    return Detection("DiTTransformer2DModel", cfg, [
        f"attention_head_dim={head_dim} (head count is not stored in the weights)",
        "sample_size=32 (the training resolution is not stored in the weights)",
    ])


def infer_unet2d(shapes: dict) -> Detection:
    n_down = _count(shapes, r"down_blocks\.(\d+)\.")
    widths = [shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(n_down)]
    layers = _count(shapes, r"down_blocks\.0\.resnets\.(\d+)\.")
    kind = lambda prefix, i: "Attn" if any(n.startswith(f"{prefix}.{i}.attentions.") for n in shapes) else ""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if all(w % g == 0 for w in widths))
    cfg = {
        "sample_size": 32,
        "in_channels": shapes["conv_in.weight"][1],
        "out_channels": shapes["conv_out.weight"][0],
        "block_out_channels": widths,
        "layers_per_block": layers,
        "down_block_types": [f"{kind('down_blocks', i)}DownBlock2D" for i in range(n_down)],
        "up_block_types": [f"{kind('up_blocks', i)}UpBlock2D" for i in range(n_down)],
        "norm_num_groups": groups,
        "attention_head_dim": _head_dim(min(widths)),
    }
    if "class_embedding.weight" in shapes:
        cfg["num_class_embeds"] = shapes["class_embedding.weight"][0]
    return Detection("UNet2DModel", cfg, [
        f"norm_num_groups={groups}, attention_head_dim={cfg['attention_head_dim']} "
        "(neither is stored in the weights)",
        "sample_size=32 (the training resolution is not stored in the weights)",
    ])


INFER = {"DiTTransformer2DModel": infer_dit, "UNet2DModel": infer_unet2d}
