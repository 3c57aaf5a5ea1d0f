"""The cache pass: ``@register_pass("cache", CacheConfig)``.

UNet (DeepCache + CacheQuant's DPS and DEC cache correction):
  1. record the cache-point feature per call on the FP trajectory (``features.py``),
  2. choose the refresh calls (``schedules.py``: uniform, CacheQuant DP, or ACS on the one point),
  3. fit the per-call, per-channel correction a1[k], b1[k] (``correction.fit_cache_correction``),
  4. replace ``full`` by the full graph that also outputs ``cache.deep``, add ``shallow``, and
     write the call table's columns (``call.graph``, ``call.extra["cache"]``, ``call.extra["tables"]``).
DiT and DP-T (Diffusion Policy's transformer): record per-sub-block outputs, BAC (or a shared
uniform/DP schedule), then ``dit_blocks`` / ``policy_blocks`` install the block-caching graphs.

Everything runs in the FP model before quantization; the quantize pass then calibrates each
graph on the feeds it receives under this schedule (CacheQuant's joint calibration).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dmc.cache.config import CacheConfig
from dmc.compress.passes import register_pass
from dmc.errors import DmcError

SOLVER_ORDER = {"ddim": 1, "dpm++2m": 2}


def default_full_first(sampler: str) -> int:
    """Leading calls that always run full: the solver's order (``algorithms.md`` §9.2, §10.2 item 12)."""
    return SOLVER_ORDER.get(sampler, 1)


def schedule_string(refresh) -> str:
    """One character per call: 'F' refreshes (full graph), '.' reuses the cache."""
    return "".join("F" if r else "." for r in np.asarray(refresh, dtype=bool))


# BAC's per-sub-block schedules need many calls: on the demo DP-T at DDIM 10 they kept 16/50 episodes where
# one shared DP schedule kept 45/50; at DDPM 100, BAC matched a shared schedule's action error at 0.38 of the
# compute against 0.5 (BENCHMARKS.md, issue #16).
BAC_MIN_CALLS_POLICY = 50
# --cache-schedule auto: family -> (number of model calls -> schedule); any other family: "dp"
AUTO = {"dit": lambda calls: "bac",
        "policy-transformer": lambda calls: "bac" if calls >= BAC_MIN_CALLS_POLICY else "dp"}


def _opset(ctx) -> int:
    for o in ctx.graphs["full"].onnx.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    from dmc.export.onnx_export import DEFAULT_OPSET

    return DEFAULT_OPSET


@register_pass("cache", CacheConfig)
def run_cache(ctx, cfg: CacheConfig) -> None:
    num_calls = len(ctx.calls)
    full_first = cfg.full_first if cfg.full_first is not None else default_full_first(ctx.recipe.sampler)
    seed = ctx.recipe.seed if cfg.seed is None else cfg.seed
    if cfg.schedule == "auto":
        pick = AUTO.get(ctx.adapter.family)
        cfg = dataclasses.replace(cfg, schedule=pick(num_calls) if pick else "dp")
    handler = FAMILY_HANDLERS.get(ctx.adapter.family)
    if handler is not None:
        return handler(ctx, cfg, full_first, seed)
    if ctx.loaded.class_name not in ("UNet2DModel", "UNet2DConditionModel"):
        raise DmcError(f"--cache supports UNet2DModel, UNet2DConditionModel and DiT models; "
                       f"{ctx.loaded.class_name} is not supported yet")
    return _run_unet(ctx, cfg, full_first, seed, num_calls)


def _run_unet(ctx, cfg, full_first, seed, num_calls) -> None:
    from dmc.cache import deepcache, features
    from dmc.cache.correction import fit_cache_correction
    from dmc.compress.context import GraphVariant
    from dmc.export.onnx_export import export_onnx

    from dmc.cache.choose import CachePoints, choose

    model = ctx.adapter.model
    deepcache.check_unet(model, cfg.branch)
    points = CachePoints(["deep"], modules=lambda: [deepcache.cache_point(model, cfg.branch)],
                         record=lambda: features.record_unet_features(ctx, cfg.branch, cfg.num_samples, seed)[:, None])
    chosen = choose(ctx, cfg, points, num_calls, full_first, seed)
    refresh = chosen.refresh[:, 0]
    cached = ~refresh
    correction = bool(cfg.correction and cached.any() and cfg.method == "reuse")  # DEC a1/b1 fit reuse
    fit = fit_cache_correction(points.features()[:, 0], refresh) if correction else None

    full, shallow, ex_full, ex_shallow, macs = deepcache.build_modules(
        ctx.adapter, ctx.sample_shape, cfg.branch, correction)
    opset = _opset(ctx)
    ctx.graphs["full"] = GraphVariant(
        deepcache.separate_output(export_onnx(full, ex_full, full.input_names, full.output_names, opset)),
        full, full.input_names, full.output_names,
        f"the whole network; also outputs {deepcache.CACHE} (DeepCache branch {cfg.branch}: "
        f"output of up_blocks[{len(model.up_blocks) - 2 - cfg.branch}])")
    if cached.any():
        ctx.graphs["shallow"] = GraphVariant(
            export_onnx(shallow, ex_shallow, shallow.input_names, shallow.output_names, opset,
                        static_inputs=(deepcache.SCALE, deepcache.SHIFT)),
            shallow, shallow.input_names, shallow.output_names,
            f"DeepCache retrieve step: down blocks 0..{cfg.branch} + cached {deepcache.CACHE}"
            + (" (per-channel corrected)" if correction else "") + f" + last {cfg.branch + 1} up block(s)")
    for k, call in enumerate(ctx.calls):
        if refresh[k]:
            call.graph = "full"
            call.extra["cache"] = {"reads": [], "writes": [deepcache.CACHE]}
            continue
        call.graph = "shallow"
        call.extra["cache"] = {"reads": [deepcache.CACHE], "writes": []}
        if correction:
            keys = {deepcache.SCALE: f"cache.scale.{k:04d}", deepcache.SHIFT: f"cache.shift.{k:04d}"}
            ctx.tables[keys[deepcache.SCALE]] = fit["scale"][k]
            ctx.tables[keys[deepcache.SHIFT]] = fit["shift"][k]
            call.extra.setdefault("tables", {}).update(keys)

    forecast = None
    if cfg.method == "forecast":
        from dmc.cache.forecast import annotate_calls

        forecast = annotate_calls(ctx.calls, refresh, [deepcache.CACHE], cfg.order)
    n_full = int(refresh.sum())
    ratio = (n_full * macs["full"] + (num_calls - n_full) * macs["shallow"]) / (num_calls * macs["full"])
    record = {
        "name": "cache",
        "method": "deepcache",
        "config": cfg.to_json(),
        "full_first": full_first,
        "seed": seed,
        "refresh": [bool(r) for r in refresh],
        "schedule": schedule_string(refresh),
        "cache_tensor": {"name": deepcache.CACHE, "channels": deepcache.cache_channels(model, cfg.branch),
                         "point": f"up_blocks[{len(model.up_blocks) - 2 - cfg.branch}] output"},
        "macs_per_image": macs,
        "cost_ratio": round(ratio, 4),
        "theoretical_speedup": round(1.0 / ratio, 3),
    }
    record.update(chosen.record)
    if forecast is not None:
        record["forecast"] = forecast
    if fit is not None:
        before = [fit["rel_l1_before"].get(k) for k in range(num_calls)]
        after = [fit["rel_l1_after"].get(k) for k in range(num_calls)]
        record["correction"] = {
            "kind": "DEC cache correction a1*cache + b1 per channel, fitted per call on the FP trajectory",
            "samples": cfg.num_samples,
            "rel_l1_before_mean": float(np.mean([v for v in before if v is not None])),
            "rel_l1_after_mean": float(np.mean([v for v in after if v is not None])),
            "rel_l1_before": before,
            "rel_l1_after": after,
        }
    ctx.passes.append(record)


def _run_policy(ctx, cfg, full_first, seed) -> None:
    """DeepCache on Diffusion Policy's 1D UNet (``unet1d.py``): one cache point, the deep feature."""
    from dmc.cache import unet1d
    from dmc.cache.choose import CachePoints, choose
    from dmc.cache.deepcache import separate_output
    from dmc.cache.features import _record
    from dmc.compress.context import GraphVariant
    from dmc.export.onnx_export import export_onnx

    denoiser, num_calls = ctx.adapter, len(ctx.calls)
    unet1d.check(denoiser)
    point = unet1d.cache_point(denoiser)
    points = CachePoints(["deep"], modules=lambda: [point],
                         record=lambda: _record(ctx, [point], cfg.num_samples, seed))
    chosen = choose(ctx, cfg, points, num_calls, full_first, seed)
    refresh = chosen.refresh[:, 0]
    full, shallow, ex_full, ex_shallow, macs = unet1d.build_modules(denoiser)
    opset = _opset(ctx)
    ctx.graphs["full"] = GraphVariant(
        separate_output(export_onnx(full, ex_full, full.input_names, full.output_names, opset), unet1d.CACHE),
        full, full.input_names, full.output_names,
        f"the denoiser; also outputs {unet1d.CACHE} (the input of the last up level)")
    if (~refresh).any():
        ctx.graphs["shallow"] = GraphVariant(
            export_onnx(shallow, ex_shallow, shallow.input_names, shallow.output_names, opset),
            shallow, shallow.input_names, shallow.output_names,
            f"DeepCache retrieve step: the first two down levels + cached {unet1d.CACHE} + the last up level")
    for call, fresh in zip(ctx.calls, refresh):
        call.graph = "full" if fresh else "shallow"
        call.extra["cache"] = {"reads": [] if fresh else [unet1d.CACHE],
                               "writes": [unet1d.CACHE] if fresh else []}
    record = {"name": "cache", "method": "deepcache-1d", "config": cfg.to_json(), "full_first": full_first,
              "seed": seed, "refresh": [bool(r) for r in refresh], "schedule": schedule_string(refresh),
              "cache_tensor": {"name": unet1d.CACHE, "point": "input of the last up level"},
              "macs_per_image": macs}
    if cfg.method == "forecast":
        from dmc.cache.forecast import annotate_calls

        record["forecast"] = annotate_calls(ctx.calls, refresh, [unet1d.CACHE], cfg.order)
    n_full = int(refresh.sum())
    ratio = (n_full * macs["full"] + (num_calls - n_full) * macs["shallow"]) / (num_calls * macs["full"])
    record.update({"cost_ratio": round(ratio, 4), "theoretical_speedup": round(1.0 / ratio, 3), **chosen.record})
    ctx.passes.append(record)


def _run_dit(ctx, cfg, full_first, seed) -> None:
    from dmc.cache.choose import CachePoints

    try:
        from dmc.cache.dit_blocks import build_dit_cache, dit_branch_layout
    except ImportError as e:
        raise DmcError(f"DiT block caching is not available in this build ({e})") from None
    from dmc.cache import features

    names, ffn = dit_branch_layout(ctx)
    blocks = ctx.adapter.model.transformer_blocks
    points = CachePoints(names, ffn, modules=lambda: [m for b in blocks for m in (b.attn1, b.ff)],  # branch order
                         record=lambda: features.record_dit_features(ctx, cfg.num_samples, seed)[0])
    _run_branches(ctx, cfg, full_first, seed, points, lambda refresh: build_dit_cache(ctx, cfg, refresh), "dit-blocks")


def _run_policy_transformer(ctx, cfg, full_first, seed) -> None:
    """BAC's home ground: DP-T's self-attention, cross-attention and FFN sub-blocks (``policy_blocks.py``)."""
    from dmc.cache import policy_blocks
    from dmc.cache.choose import CachePoints
    from dmc.cache.features import _record

    names, ffn = policy_blocks.branch_layout(ctx.adapter)
    modules = lambda: policy_blocks.branch_modules(ctx.adapter)  # noqa: E731
    points = CachePoints(names, ffn, modules=modules, record=lambda: _record(ctx, modules(), cfg.num_samples, seed))
    _run_branches(ctx, cfg, full_first, seed, points, lambda refresh: policy_blocks.build_policy_cache(ctx, refresh),
                  "dpt-blocks")


def _run_branches(ctx, cfg, full_first, seed, points, build, method) -> None:
    """Per-branch caching: choose a refresh mask per branch from ``points`` (recorded on the FP
    trajectory on first use), then ``build(refresh)`` installs the graphs."""
    from dmc.cache import schedules
    from dmc.cache.choose import choose

    num_calls, names = len(ctx.calls), points.labels
    chosen = choose(ctx, cfg, points, num_calls, full_first, seed)
    refresh = chosen.refresh
    build(refresh)
    patterns, _ = schedules.distinct_rows(refresh)
    forecast = None
    if cfg.method == "forecast":
        from dmc.cache.forecast import annotate_calls

        forecast = annotate_calls(ctx.calls, refresh, [f"cache.{n}" for n in names], cfg.order)
    ctx.passes.append({
        "name": "cache",
        "method": method,
        "config": cfg.to_json(),
        "full_first": full_first,
        "seed": seed,
        "blocks": names,
        "ffn_blocks": points.ffn,
        "refresh": refresh.astype(bool).tolist(),
        "schedule": schedule_string(refresh.all(axis=1)),
        "distinct_patterns": len(patterns),
        "cost_ratio": round(float(refresh.mean()), 4),  # fraction of sub-block computations that run
        "cost_ratio_kind": "fraction of cached sub-block computations run (blocks weighted equally)",
        **chosen.record,
        **({"forecast": forecast} if forecast else {}),
    })


# adapter family -> handler; any other family is an image UNet (DeepCache on up_blocks)
FAMILY_HANDLERS = {"dit": _run_dit, "policy": _run_policy, "policy-transformer": _run_policy_transformer}
