"""The prune pass: ``@register_pass("prune", PruneConfig)``; runs first, before cache and quantize.

1. find the maskable structures of the family (``structures.py``),
2. score them: hard-concrete logits learned end to end through the unrolled sampler
   (``train.py``), or the L1 magnitude baseline,
3. binarize to the target (parameters, or MACs per call: ``costs.py``) with aligned widths, slice
   physically (``slicing.py``),
4. swap the pruned model in (``ctx.loaded.model``, ``ctx.adapter``) and re-export ``full``; every
   later pass and the verification then work on the pruned model, and the manifest's parameter
   count is the pruned one,
5. record per-layer widths and the drop against the unpruned model (paired PSNR of final samples
   on held-out noise, same sampler) in the manifest.
"""

from __future__ import annotations

import numpy as np
import torch

from dmc.compress.passes import register_pass
from dmc.errors import DmcError
from dmc.prune.config import PruneConfig


def _params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _opset(ctx) -> int:
    for o in ctx.graphs["full"].onnx.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    from dmc.export.onnx_export import DEFAULT_OPSET

    return DEFAULT_OPSET


def _psnr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    rmse = float(np.sqrt(np.mean((np.clip(a, -1, 1) - np.clip(b, -1, 1)) ** 2)) / 2)
    return rmse, (100.0 if rmse == 0 else min(100.0, float(-20 * np.log10(rmse))))


def _one_sample(adapter, sample_shape) -> tuple:
    """One model call's inputs for a single image (MACs are counted per image and call)."""
    example = adapter.example_inputs(1)
    return (torch.randn(1, *sample_shape),) + tuple(example[1:])


def score_units(ctx, cfg: PruneConfig, units, costs: list[float], total: float, seed: int):
    """Per-structure scores (higher = keep) and the training log (None for magnitude)."""
    from dmc.prune.structures import STRUCTURES

    model = ctx.adapter.model
    if cfg.method.startswith("magnitude"):
        scores = [STRUCTURES[u.kind].magnitude(model.get_submodule(u.path), u) for u in units]
        if cfg.method == "magnitude-layer":  # rank within the layer, as a fraction: uniform removal
            scores = [torch.argsort(torch.argsort(s)).float() / len(s) for s in scores]
        return scores, None
    from dmc.prune.masks import MaskSet
    from dmc.prune.train import TrainOptions, learn_masks

    masks = MaskSet(model, units, seed=seed, costs=costs)
    try:
        opts = TrainOptions(iterations=cfg.iterations, samples=cfg.samples, batch=cfg.batch, lr=cfg.lr,
                            dual_lr=cfg.dual_lr, seed=seed)
        log = learn_masks(ctx.adapter, masks, ctx.calls, ctx.recipe.guidance, ctx.sample_shape, total,
                          cfg.ratio, opts)
    finally:
        masks.remove()
    return [la.detach().clone() for la in masks.log_alpha], log


@register_pass("prune", PruneConfig)
def run_prune(ctx, cfg: PruneConfig) -> None:
    from dmc.compress.context import GraphVariant
    from dmc.compress.pipeline import OUTPUT_NAME
    from dmc.export.onnx_export import export_onnx
    from dmc.models.adapters import make_adapter
    from dmc.prune.costs import count_macs, unit_costs
    from dmc.prune.slicing import binarize, slice_model
    from dmc.prune.structures import find_units

    cfg.validate()
    if set(ctx.graphs) != {"full"}:
        raise DmcError("prune must run before any pass that adds graph variants")
    seed = ctx.recipe.seed if cfg.seed is None else cfg.seed
    model = ctx.adapter.model
    total = _params(model)
    units = find_units(model, ctx.adapter.family)
    one = _one_sample(ctx.adapter, ctx.sample_shape)
    costs, total_cost = unit_costs(model, units, cfg.target, lambda: ctx.adapter(*one))
    scores, log = score_units(ctx, cfg, units, costs, total_cost, seed)
    keep = binarize(units, scores, cfg.ratio * total_cost, cfg.align, costs)
    pruned, layers = slice_model(model, units, keep)
    macs_before = count_macs(lambda: ctx.adapter(*one))

    n, first = cfg.eval_samples, cfg.samples  # held out: the noise the masks were trained on is 0..samples-1
    before = ctx.torch_pipeline().sample(n, seed=seed, first=first)
    adapter = make_adapter(pruned, ctx.loaded.class_name)
    c, h, w = ctx.sample_shape
    example = adapter.example_inputs(2)
    example = (torch.randn(2, c, h, w),) + tuple(example[1:])
    macs_after = count_macs(lambda: adapter(*_one_sample(adapter, ctx.sample_shape)))
    graph = export_onnx(adapter, example, adapter.input_names, [OUTPUT_NAME], _opset(ctx))
    ctx.graphs["full"] = GraphVariant(graph, adapter, adapter.input_names, [OUTPUT_NAME],
                                      f"the whole network, structurally pruned ({cfg.method}, "
                                      f"{1 - _params(pruned) / total:.1%} of parameters, "
                                      f"{1 - macs_after / max(macs_before, 1):.1%} of MACs removed)")
    ctx.adapter = adapter
    ctx.loaded.model = pruned
    after = ctx.torch_pipeline().sample(n, seed=seed, first=first)
    rmse, psnr = _psnr(after, before)
    kept = _params(pruned)
    record = {
        "name": "prune",
        "method": cfg.method,
        "config": cfg.to_json(),
        "seed": seed,
        "params_before": total,
        "params_after": kept,
        "params_ratio": round(kept / total, 4),
        "target": cfg.target,
        "macs_before": macs_before,  # per image and model call
        "macs_after": macs_after,
        "macs_ratio": round(macs_after / max(macs_before, 1), 4),
        "structures": {k: sum(1 for u in units if u.kind == k) for k in sorted({u.kind for u in units})},
        "layers": [r for r in layers if r["kept"] < r["units"]],
        "unchanged_layers": [r["module"] for r in layers if r["kept"] == r["units"]],
        "quality_vs_unpruned": {"images": n, "first_image": first, "seed": seed, "rmse": rmse, "psnr_db": psnr,
                                "note": "pruned vs unpruned torch model, same sampler, noise and labels"},
        "model_config_note": "model.config describes the unpruned architecture; the graphs hold the pruned one",
    }
    if log is not None:
        curve = log.pop("curve")
        step = max(1, len(curve["recon"]) // 20)
        log["curve"] = {k: v[::step] for k, v in curve.items()}
        record["training"] = log
    ctx.passes.append(record)
