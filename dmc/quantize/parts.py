"""INT8 on the rest of a text-to-image pipeline: ``dmc compress FOLDER --int8-parts text,vae``.

Only the denoiser is compressed by default. On request the text encoders and/or the VAE decoder get the
backbone's W8A8 recipe (per-channel symmetric weights, MSE-searched activation ranges, the profile's Q/DQ
placement), calibrated on what each part sees in use: the text encoders on the calibration prompts and the
empty negative prompt, the VAE decoder on final latents of the torch pipeline under those prompts with CFG.
Each quantized part is then verified like the backbone: its written graph against its torch module on
held-out inputs (the evaluation prompts; latents of other seeds under them), refused below a PSNR floor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dmc.errors import DmcError

PART_GROUPS = ("text", "vae")
VAE_IMAGES = 2  # images whose final latents calibrate (and, at another seed, check) the decoder: 2 torch runs
TEXT_BATCH = 16


@dataclass
class PartCheck:
    """Held-out inputs of one quantized part and its torch outputs on them (the verification data)."""

    feeds: dict
    want: list  # one array per graph output


def psnr_db(got: np.ndarray, want: np.ndarray) -> float:
    """PSNR over the reference's value range (images in [-1, 1] and text states alike), capped at 100 dB."""
    want = want.astype(np.float64)
    rmse = float(np.sqrt(np.mean((got.astype(np.float64) - want) ** 2)))
    span = float(want.max() - want.min()) or 1.0
    return 100.0 if rmse == 0 else min(100.0, 20 * np.log10(span / rmse))


def _text_feeds(parts, enc: dict, prompts: list[str]) -> dict:
    from dmc.export.pipeline_parts import torch_tokenize

    ids, mask = torch_tokenize(parts, enc, prompts)
    return {"input_ids": ids, **({"attention_mask": mask} if enc["mask"] else {})}


def _torch_outputs(module, feeds: dict) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*(torch.from_numpy(v) for v in feeds.values()))
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def _text_data(ctx, parts, name: str) -> tuple[list[dict], PartCheck, str]:
    enc = next(e for e in parts.section["text_encoders"] if e["graph"] == name)
    calib = _text_feeds(parts, enc, list(ctx.prompt_conditions.prompts) + [""])
    batches = [{k: v[s:s + TEXT_BATCH] for k, v in calib.items()} for s in range(0, len(calib["input_ids"]), TEXT_BATCH)]
    feeds = _text_feeds(parts, enc, list(ctx.verify_conditions.prompts) + [""])
    return batches, PartCheck(feeds, _torch_outputs(parts.modules[name], feeds)), "input_ids"


def _vae_data(ctx, parts, name: str) -> tuple[list[dict], PartCheck, str]:
    from dmc.runtimes.text2image import vae_input

    vae = parts.section["vae"]
    seed = ctx.recipe.seed
    calib = vae_input(ctx.torch_pipeline().sample(VAE_IMAGES, seed=seed + 1), vae)
    held = vae_input(ctx.torch_pipeline(reference=True).sample(VAE_IMAGES, seed=seed + 2), vae)
    feeds = {"latent": held}
    return ([{"latent": calib[i:i + 1]} for i in range(len(calib))],
            PartCheck(feeds, _torch_outputs(parts.modules[name], feeds)), "latent")


@dataclass(frozen=True)
class PartGroup:
    covers: Callable[[str], bool]  # which part graphs the group names
    data: Callable  # (ctx, parts, name) -> (calibration feeds, held-out check, the feed that counts rows)
    keep_float: tuple[str, ...]  # float islands (QuantizeConfig.keep_float words)


GROUPS = {
    # "first" would keep every layer float: the residual stream reaches each block's projections from the
    # embedding without passing another quantizable layer
    "text": PartGroup(lambda name: name != "vae_decoder", _text_data, ("last",)),
    "vae": PartGroup(lambda name: name == "vae_decoder", _vae_data, ("first", "last")),
}


def parse_groups(value: str | None) -> tuple[str, ...]:
    """``"text,vae"`` -> ("text", "vae"); a clear error for anything else."""
    if not value:
        return ()
    groups = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise DmcError(f"--int8-parts {value!r}: choose from {', '.join(PART_GROUPS)} (comma-separated)")
    return groups


def quantize_parts(ctx, parts, groups: tuple[str, ...], cfg, floor_db: float) -> dict:
    """Replace the chosen part graphs by INT8 ones; returns the manifest's report. ``parts.checks`` gets the
    held-out data that ``verify_parts`` runs the written graphs on."""
    from dmc.quantize import qdq
    from dmc.quantize.profiles import get_profile

    if not groups:
        return {}
    profile = get_profile(cfg.profile)
    report = {}
    for group in groups:
        spec = GROUPS[group]
        part_cfg = dataclasses.replace(cfg, keep_float=spec.keep_float)
        for name in [n for n in parts.graphs if spec.covers(n)]:
            calib, check, rows_key = spec.data(ctx, parts, name)
            prepared = qdq.prepare_graph(parts.graphs[name], part_cfg, profile)
            stats = qdq.record_stats(prepared, calib, cfg.seed, rows_key=rows_key)
            params = qdq.activation_params(stats, part_cfg, profile)
            qmodel = qdq.build_qdq(prepared, params, profile, part_cfg.op_types)
            if profile.private_dq:
                qdq.privatize_dq(qmodel, set(prepared.layers))
            mismatch = qdq.verify_scales(qmodel, prepared, params, profile)
            if mismatch:
                raise DmcError(f"quantize: ONNX Runtime did not write dmc's scales into {name}: {mismatch[0]}")
            parts.graphs[name] = qmodel
            parts.checks[name] = check
            info = parts.section["graphs"][name]
            info["precision"] = "int8"
            info["computes"] = f"{info['computes']} (W8A8 {profile.name})"
            report[name] = {"group": group, "quantized_layers": len(prepared.layers),
                            "float_islands": prepared.islands,
                            "calibration_rows": int(sum(len(b[rows_key]) for b in calib))}
    parts.section["int8"] = {"groups": list(groups), "profile": profile.name, "floor_psnr_db": floor_db,
                             "graphs": report}
    return report


def check_written(executor, parts, floor_db: float) -> dict[str, float]:
    """PSNR of each written INT8 part graph against torch on its held-out inputs; raises below the floor."""
    result = {}
    for name, check in parts.checks.items():
        got = [executor.to_numpy(v) for v in executor.run(name, check.feeds)]
        result[name] = min(psnr_db(g, w) for g, w in zip(got, check.want))
        if not result[name] >= floor_db:
            raise DmcError(f"verification failed: INT8 {name} reaches {result[name]:.1f} dB against torch on "
                           f"held-out inputs, below the floor of {floor_db:g} dB; nothing was written "
                           "(leave it FP32: drop it from --int8-parts)")
    return result
