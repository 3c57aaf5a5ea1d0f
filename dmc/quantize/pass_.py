"""The ``quantize`` pass: PTQ4DM / Q-Diffusion W8A8 on every graph variant of the artifact."""

from __future__ import annotations

import time

import numpy as np

from dmc.compress.context import GraphVariant
from dmc.compress.passes import register_pass
from dmc.errors import DmcError
from dmc.quantize import calibration, qdq
from dmc.quantize.coverage import coverage as ort_coverage
from dmc.quantize.coverage import requested as requested_int8
from dmc.quantize.config import QuantizeConfig
from dmc.quantize.profiles import check_profile, get_profile
from dmc.quantize.stream import quantize_stream

# Verification compares the INT8 artifact with the FP32 torch pipeline. Measured on the demo models
# (DDIM 20, guidance 2, NDTC 256): 33-38 dB paired PSNR (BENCHMARKS.md); a broken quantizer
# (wrong scales, unsplit bimodal tensors at 4-bit-like error) gives < 15 dB. 25 dB leaves margin.
FIDELITY_FLOOR_PSNR = 25.0


def scale_group_bounds(num_calls: int, groups: int) -> list[range]:
    """``groups`` contiguous call ranges, as equal as possible (k = 0 is the noisiest call)."""
    groups = min(groups, num_calls)
    edges = np.linspace(0, num_calls, groups + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _map_by_layer(target: qdq.PreparedGraph, source: qdq.PreparedGraph, params: dict) -> dict:
    """Ranges of ``source`` (the full graph) carried over to ``target`` by layer identity."""
    src_nodes = {n.name: n for n in source.model.graph.node}
    by_layer = {layer: src_nodes[nm] for nm, layer in source.layers.items()}
    nodes = {n.name: n for n in target.model.graph.node}
    out = {}
    for nm, layer in target.layers.items():
        if layer not in by_layer:
            raise DmcError(f"calibrate_under_schedule=False: layer {layer} of a partial graph is not in "
                           "the full graph; calibrate under the schedule instead")
        s, t = by_layer[layer], nodes[nm]
        for a, b in list(zip(t.input, s.input)) + list(zip(t.output[:1], s.output[:1])):
            if a in target.tensors and b in params:
                out[a] = params[b]
    missing = [t for t in target.tensors if t not in out]
    if missing:
        raise DmcError(f"calibrate_under_schedule=False: no full-graph range for {missing[:3]}")
    return out


def _dropper(graph: GraphVariant):
    def drop() -> None:
        graph.onnx = None
    return drop


@register_pass("quantize", QuantizeConfig)
def quantize(ctx, cfg: QuantizeConfig) -> None:
    started = time.time()
    cfg.validate()
    profile = get_profile(cfg.profile)
    sources = {name: g for name, g in ctx.graphs.items() if g.precision != "int8"}
    if not sources:
        raise DmcError("quantize: every graph is already INT8")
    used = {c.graph for c in ctx.calls}
    if not cfg.calibrate_under_schedule and "full" not in ctx.graphs:
        raise DmcError("calibrate_under_schedule=False needs the full graph to record the uncached trajectory")
    # Each graph to quantize is dropped from memory once its weights are in the prepared folder
    # (it is replaced by its INT8 variant below); one with no layer to quantize stays as it is.
    prepared = {name: qdq.prepare_graph(g.onnx, cfg, profile, release=_dropper(g))
                for name, g in sources.items() if name in used}
    for name in [n for n, p in prepared.items() if not p.layers and n != "full"]:
        # a cached-step variant whose every quantizable layer is cached away or a float island stays float
        ctx.warnings.append(f"quantize: graph {name!r} has no layer to quantize (all cached or float islands); "
                            "it stays FP32")
        del prepared[name]
    if not cfg.calibrate_under_schedule and "full" not in prepared:
        prepared_full = qdq.prepare_graph(ctx.graphs["full"].onnx, cfg, profile)
    else:
        prepared_full = prepared.get("full")
    cset = calibration.build(ctx, cfg, under_schedule=cfg.calibrate_under_schedule)
    n_calls = len(ctx.calls)
    groups = scale_group_bounds(n_calls, cfg.scale_groups)
    new_graphs: dict[str, GraphVariant] = {}
    report: dict[str, dict] = {}
    call_graph = [c.graph for c in ctx.calls]
    for gi, bounds in enumerate(groups):
        for name, prep in prepared.items():
            ks = [k for k in bounds if ctx.calls[k].graph == name]
            if not ks:
                continue
            variant = name if len(groups) == 1 else f"{name}@g{gi}"
            # Rows recorded at this group's calls, on the graph that ran them while recording.
            rec_graph = name if cfg.calibrate_under_schedule else "full"
            rows = [k for k in bounds if k in cset.batches and cset.graph_of[k] == rec_graph]
            if cfg.calibrate_under_schedule:
                rows = [k for k in rows if k in ks]
            if not rows:
                ctx.warnings.append(f"quantize: no calibration samples for {variant} (calls {ks[0]}..{ks[-1]}); "
                                    f"using all of {rec_graph}'s samples")
                rows = [k for k in cset.batches if cset.graph_of[k] == rec_graph]
            if not rows:
                raise DmcError(f"quantize: the calibration set never reached graph {name!r}")
            src_prep = prep if rec_graph == name else prepared_full
            progress = getattr(ctx, "progress", False)
            stats = qdq.record_stats(src_prep, [cset.batches[k] for k in rows], cfg.seed, progress=progress)
            params = qdq.activation_params(stats, cfg, profile, progress=progress)
            del stats
            if src_prep is not prep:
                params = _map_by_layer(prep, src_prep, params)
            qmodel = qdq.build_qdq(prep, params, profile, cfg.op_types)
            if profile.private_dq:
                qdq.privatize_dq(qmodel, set(prep.layers))
            stream_pairs = quantize_stream(qmodel, prep.stream, params)
            mismatch = qdq.verify_scales(qmodel, prep, params, profile)
            ops = ("Gemm", "MatMul") if profile.backend == "tensorrt" else ("Conv", "ConvTranspose", "Gemm", "MatMul")
            weight_only = qdq.add_weight_only(qmodel, prep, ops, cfg.weight_only_islands)
            if mismatch:
                raise DmcError(f"quantize: ONNX Runtime did not write dmc's scales into {variant}: {mismatch[0]}")
            problems = check_profile(qmodel, profile, cfg.residual_stream)
            cov = ort_coverage(qmodel)
            req = requested_int8(qmodel)
            for cat, n in req.items():
                if cov[cat]["int8"] < n and profile.quantize_outputs:  # trt graphs are TensorRT's to fuse
                    ctx.warnings.append(f"quantize: {variant}: only {cov[cat]['int8']} of {n} {cat} layers run "
                                        f"as INT8 kernels in ONNX Runtime (the rest fell back to float)")
            if problems:
                ctx.warnings.append(f"quantize: {variant} breaks the {profile.name} profile: {problems[0]}"
                                    + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
            src = sources[name]
            new_graphs[variant] = GraphVariant(
                qmodel, src.module, list(src.input_names), list(src.output_names),
                f"{src.computes} (W8A8 {profile.name}" + (f", scale group {gi}: calls {ks[0]}..{ks[-1]}" if len(groups) > 1 else "") + ")",
                precision="int8", reference=src.reference)
            for k in ks:
                call_graph[k] = variant
            report[variant] = {
                "source_graph": name,
                "calls": ks,
                "calibration_calls": rows,
                "calibration_rows": int(sum(cset.rows(k) for k in rows)),
                "quantized_layers": len(prep.layers),
                "residual_stream": {"tensors": len(prep.stream), "pairs_added": stream_pairs},
                "float_islands": prep.islands,
                "weight_only_int8": weight_only,
                "split_convs": [s["weight"] for s in prep.splits],
                "coverage": cov,
                "requested": req,
                "profile_problems": problems,
                "activation_ranges": {t: p.to_json() for t, p in params.items()},
            }
    for name in prepared:
        del ctx.graphs[name]
    ctx.graphs.update(new_graphs)
    for k, call in enumerate(ctx.calls):
        call.graph = call_graph[k]
        if len(groups) > 1:
            call.extra = {**call.extra, "scale_group": next(i for i, b in enumerate(groups) if k in b)}
    if profile.backend != "onnxruntime":
        ctx.warnings.append(f"quantize: profile {profile.name} targets {profile.backend}; ONNX Runtime on CPU runs "
                            "its Q/DQ graphs mostly in float (INT8 kernels there need the ort-cpu profile)")
    ctx.precision = "int8"
    ctx.target = profile.name
    ctx.backend = profile.backend
    ctx.fidelity_floor_psnr = min(ctx.fidelity_floor_psnr, FIDELITY_FLOOR_PSNR)
    ctx.passes.append({
        "name": "quantize",
        "method": "PTQ4DM W8A8 (NDTC / Q-Diffusion calibration, shortcut splitting); Q/DQ by onnxruntime.quantization",
        "config": {**cfg.to_json(), "attention_matmuls": cfg.quantizes_attention(profile)},
        "calibration": cset.summary(n_calls),
        "scale_groups": [[b.start, b.stop - 1] for b in groups],
        "graphs": report,
    })
    ctx.build_facts.setdefault("pass_seconds", {})["quantize"] = round(time.time() - started, 1)
