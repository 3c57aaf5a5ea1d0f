"""CacheQuant's decoupled error correction, DEC (``algorithms.md`` §5.4).

Step 1, the **cache correction** (input side): per cached call k and channel c, the cached
feature X_c (from the refresh call before k) is mapped to a1[k]·X_c + b1[k], fitted by least
squares to the true feature X_g^k of the uncached FP trajectory. The shallow graph applies it
as a per-channel multiply-add whose coefficients are graph inputs ("cache.scale",
"cache.shift", shape [C]) fed per call from the artifact's tables; refresh calls run the full
graph, which reads no cache (the identity).

Step 2, the **quantization correction** (output side, only with ``--int8``), is a per-output-
channel multiply-add a2[k]·y + b2[k] after the first conv that consumes the cached feature:
``fold_output_correction`` writes it as that FMA (not as per-step weight copies,
``algorithms.md`` §10.2 item 6) and ``unfold_output_correction`` is the equivalent weight-folded
conv used to check the rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmc.compress.passes import register_pass
from dmc.errors import DmcError


def fit_cache_correction(features: np.ndarray, refresh: np.ndarray) -> dict:
    """CacheQuant's DEC cache correction (``algorithms.md`` §5.4 step 1), per call and channel.

    ``features[k]``: the cache-point feature of the uncached FP model at call k, ``[S, C, H, W]``.
    For each cached call k (refresh call r before it) fit X^k ≈ a·X^r + b per channel by least
    squares over samples × pixels: a = Cov(X^r, X^k)/Var(X^r), b = mean(X^k) − a·mean(X^r).
    Refresh calls get the identity. Returns ``scale``/``shift`` ``[K, C]`` float32 and the mean
    relative L1 error of the cached feature before and after correction, per cached call.
    """
    refresh = np.asarray(refresh, dtype=bool)
    num_calls = len(refresh)
    c = features.shape[2]
    scale = np.ones((num_calls, c), dtype=np.float32)
    shift = np.zeros((num_calls, c), dtype=np.float32)
    before, after = {}, {}
    last = 0
    for k in range(num_calls):
        if refresh[k]:
            last = k
            continue
        xc = np.moveaxis(features[last], 1, 0).reshape(c, -1).astype(np.float64)
        xg = np.moveaxis(features[k], 1, 0).reshape(c, -1).astype(np.float64)
        mc, mg = xc.mean(1), xg.mean(1)
        var = ((xc - mc[:, None]) ** 2).mean(1)
        cov = ((xc - mc[:, None]) * (xg - mg[:, None])).mean(1)
        a = np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0)
        b = mg - a * mc
        scale[k], shift[k] = a, b
        norm = np.abs(xg).mean() + 1e-12
        before[k] = float(np.abs(xg - xc).mean() / norm)
        after[k] = float(np.abs(xg - (a[:, None] * xc + b[:, None])).mean() / norm)
    return {"scale": scale, "shift": shift, "rel_l1_before": before, "rel_l1_after": after}


# ----------------------------------------------------------------------------- quantization correction


@dataclass
class CorrectConfig:
    """CacheQuant's DEC step 2 (``algorithms.md`` §5.4): after ``--int8``, a per-call, per-output-
    channel map a2[k]·y + b2[k] on the first convs that consume the cached feature in the shallow
    graph (``layers``, inside the first resnet of the first shallow up block): the cache half of the
    split ``conv_shortcut`` (its bias included, as in CacheQuant's fit) and ``conv1``.

    Fitted by least squares per call on the FP trajectory under the cache schedule: the FP torch
    value of the layer output against the INT8 graph's value on the same feeds.
    """

    layers: tuple = ("conv_shortcut", "conv1")
    num_samples: int = 8
    seed: int | None = None

    def __post_init__(self):
        self.layers = tuple(self.layers)
        if not self.layers or any(x not in ("conv_shortcut", "conv1") for x in self.layers):
            raise DmcError(f"correct: layers must be a subset of conv_shortcut, conv1 (got {list(self.layers)})")
        if self.num_samples < 1:
            raise DmcError(f"correct: num_samples must be >= 1, got {self.num_samples}")

    def to_json(self) -> dict:
        return {"layers": list(self.layers), "num_samples": self.num_samples, "seed": self.seed}


def fit_channel_affine(target: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (axis 1) least squares ``target ≈ a·source + b`` over every other axis."""
    c = source.shape[1]
    xs = np.moveaxis(source, 1, 0).reshape(c, -1).astype(np.float64)
    xt = np.moveaxis(target, 1, 0).reshape(c, -1).astype(np.float64)
    ms, mt = xs.mean(1), xt.mean(1)
    var = ((xs - ms[:, None]) ** 2).mean(1)
    cov = ((xs - ms[:, None]) * (xt - mt[:, None])).mean(1)
    a = np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0)
    return a.astype(np.float32), (mt - a * ms).astype(np.float32)


def fold_into_conv(weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray, shift: np.ndarray):
    """The unfolded (per-step weights) form of ``scale·Conv(x, W, bias) + shift``: ``Conv(x, scale⊙W,
    scale·bias + shift)``. dmc never ships this (it would copy the weights per call); tests use it to
    check the multiply-add form is the same map."""
    w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    b = (np.zeros(len(scale), weight.dtype) if bias is None else bias) * scale + shift
    return w.astype(weight.dtype), b.astype(weight.dtype)


def insert_channel_fma(model, tensor: str, scale_input: str, shift_input: str, channels: int):
    """Return a copy of ``model`` where every consumer of ``tensor`` reads ``tensor·scale + shift``
    instead, with ``scale``/``shift`` new graph inputs of shape ``[channels]`` (per-call tables)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from dmc.export.external import copy_model

    out = copy_model(model)  # no serialization: any size
    g = out.graph
    producers = [i for i, n in enumerate(g.node) if tensor in n.output]
    if not producers and tensor not in {i.name for i in g.input}:
        raise DmcError(f"correct: tensor {tensor!r} is not in the graph")
    shape_name = f"{tensor}.fma_shape"
    g.initializer.append(numpy_helper.from_array(np.array([1, -1, 1, 1], dtype=np.int64), shape_name))
    s4, b4, mul, fixed = (f"{tensor}.fma_{x}" for x in ("scale4d", "shift4d", "mul", "out"))
    for n in g.node:
        for j, name in enumerate(n.input):
            if name == tensor:
                n.input[j] = fixed
    for o in g.output:
        if o.name == tensor:
            raise DmcError(f"correct: {tensor!r} is a graph output; cannot correct it in place")
    new = [helper.make_node("Reshape", [scale_input, shape_name], [s4], name=f"{tensor}.fma_rs"),
           helper.make_node("Reshape", [shift_input, shape_name], [b4], name=f"{tensor}.fma_rb"),
           helper.make_node("Mul", [tensor, s4], [mul], name=f"{tensor}.fma_mul"),
           helper.make_node("Add", [mul, b4], [fixed], name=f"{tensor}.fma_add")]
    at = (producers[0] + 1) if producers else 0
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes[:at] + new + nodes[at:])
    for name in (scale_input, shift_input):
        if name not in {i.name for i in g.input}:
            g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [channels]))
    return out


def _conv_output_tensor(model, weight: str) -> tuple[str, str] | None:
    """(layer output tensor after its output Q/DQ if any, conv node name) of the Conv whose weight
    is ``weight`` (FP name) in a float or Q/DQ graph; None if absent."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def is_weight(name: str) -> bool:
        base = name[: -len("_quantized")] if name.endswith("_quantized") else name
        return base == weight or (base.startswith(weight + ".") and ".split" not in base[len(weight):])

    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2:
            continue
        w = n.input[1]
        p = producers.get(w)
        if not (is_weight(w) or (p is not None and p.op_type == "DequantizeLinear" and is_weight(p.input[0]))):
            continue
        y = n.output[0]
        nxt = consumers.get(y, [])
        if len(nxt) == 1 and nxt[0].op_type == "QuantizeLinear":
            dq = consumers.get(nxt[0].output[0], [])
            if len(dq) == 1 and dq[0].op_type == "DequantizeLinear":
                return dq[0].output[0], n.name
        return y, n.name
    return None


def _run_with_outputs(model, feeds_list: list[dict], tensors: list[str],
                      backend: str = "onnxruntime") -> list[list[np.ndarray]]:
    """Run ``model`` on ONNX Runtime returning ``tensors``. A graph written for another backend (ov-cpu,
    trt) runs with ORT's basic optimisations only: its fusions are not the target's anyway, and its
    Conv + Add fusion drops a split conv's partial output even when asked for it as a graph output."""
    import onnxruntime as ort

    from dmc.export.probe import session_with_outputs

    level = None if backend == "onnxruntime" else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = session_with_outputs(model, tensors, optimization_level=level)
    names = {i.name for i in session.get_inputs()}
    return [session.run(tensors, {k: v for k, v in f.items() if k in names}) for f in feeds_list]


def _cache_record(ctx) -> dict | None:
    rec = next((p for p in ctx.passes if p.get("name") == "cache"), None)
    if rec is None:
        raise DmcError("the quantization correction (correct pass) needs --cache")
    if rec.get("method") != "deepcache":  # DiT block caching: no single cache consumer to correct
        ctx.warnings.append(f"correct: nothing to do for {rec.get('method')} caching (UNet DeepCache only)")
        return None
    return rec


@register_pass("correct", CorrectConfig)
def run_correct(ctx, cfg: CorrectConfig) -> None:
    """Fit and install a2[k], b2[k] on the INT8 shallow graphs (see ``CorrectConfig``)."""
    import torch
    import torch.nn.functional as F

    from dmc.cache.deepcache import CACHE

    rec = _cache_record(ctx)
    if rec is None:
        return
    shallow = sorted({c.graph for c in ctx.calls if c.extra.get("cache", {}).get("reads")})
    if not shallow:
        ctx.warnings.append("correct: no call reads the cache; nothing to correct")
        return
    if not all(ctx.graphs[g].precision == "int8" for g in shallow):
        raise DmcError("the quantization correction (correct pass) needs --int8")
    model = ctx.adapter.model
    branch = rec["config"]["branch"]
    up = len(model.up_blocks) - 1 - branch
    resnet = model.up_blocks[up].resnets[0]
    cache_c = rec["cache_tensor"]["channels"]
    prefix = f"model.up_blocks.{up}.resnets.0"
    # per layer: (FP weight name in the graphs, torch module, part of the conv input that is the cache)
    wanted = {}
    for layer in cfg.layers:
        mod = getattr(resnet, layer, None)
        if mod is None:
            continue
        wanted[layer] = mod
    # locate the corrected tensors in every shallow graph (split cache half if the graph was split)
    where: dict[str, dict[str, tuple[str, bool]]] = {}
    for g in shallow:
        onnx_model = ctx.graphs[g].onnx
        where[g] = {}
        for layer in wanted:
            split = _conv_output_tensor(onnx_model, f"{prefix}.{layer}.weight.split0")
            found = split or _conv_output_tensor(onnx_model, f"{prefix}.{layer}.weight")
            if found is None:
                raise DmcError(f"correct: graph {g} has no conv {prefix}.{layer}")
            where[g][layer] = (found[0], split is not None)

    # FP feeds and FP layer outputs at the cached calls, on the trajectory under the schedule
    seed = ctx.recipe.seed if cfg.seed is None else cfg.seed
    captured: dict[str, torch.Tensor] = {}

    def hook_for(layer):
        def hook(mod, inputs, output):
            captured[layer] = (inputs[0], output)
        return hook

    handles = [m.register_forward_hook(hook_for(layer)) for layer, m in wanted.items()]
    feeds_at: dict[int, list[dict]] = {}
    fp_at: dict[int, dict[str, list[np.ndarray]]] = {}
    graphs_of = [c.graph for c in ctx.calls]

    def on_call(k, feeds, raw, x_next):
        if graphs_of[k] not in shallow:
            return
        feeds_at.setdefault(k, []).append({n: np.array(v) for n, v in feeds.items()})
        for layer, mod in wanted.items():
            x, y = captured[layer]
            split = where[graphs_of[k]][layer][1]
            if split:  # the cache half of Conv(concat(cache, skip)) with the bias (added in part 0)
                y = F.conv2d(x[:, :cache_c], mod.weight[:, :cache_c], mod.bias, mod.stride, mod.padding,
                             mod.dilation, mod.groups)
            fp_at.setdefault(k, {}).setdefault(layer, []).append(y.detach().float().numpy().copy())

    try:
        ctx.torch_pipeline().sample(cfg.num_samples, seed=seed, batch_size=cfg.num_samples, on_call=on_call,
                                    first=2_000_000)
    finally:
        for h in handles:
            h.remove()

    # INT8 layer outputs on the same feeds; per call and channel: FP ≈ a2·INT8 + b2
    stats = {}
    coeffs: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for g in shallow:
        ks = [k for k in sorted(feeds_at) if graphs_of[k] == g]
        tensors = [where[g][layer][0] for layer in wanted]
        outs = _run_with_outputs(ctx.graphs[g].onnx, [f for k in ks for f in feeds_at[k]], tensors, ctx.backend)
        i = 0
        for k in ks:
            for b in range(len(feeds_at[k])):
                for j, layer in enumerate(wanted):
                    q = outs[i][j]
                    t = fp_at[k][layer][b]
                    prev = coeffs.get((layer, k))
                    coeffs[(layer, k)] = (np.concatenate([prev[0], q]), np.concatenate([prev[1], t])) if prev else (q, t)
                i += 1
    tables = {}
    for (layer, k), (q, t) in sorted(coeffs.items(), key=lambda x: (x[0][1], x[0][0])):
        a, b = fit_channel_affine(t, q)
        before = float(np.sqrt(np.mean((t - q) ** 2)) / (np.sqrt(np.mean(t ** 2)) + 1e-12))
        shp = (1, -1) + (1,) * (q.ndim - 2)
        after = float(np.sqrt(np.mean((t - (a.reshape(shp) * q + b.reshape(shp))) ** 2))
                      / (np.sqrt(np.mean(t ** 2)) + 1e-12))
        stats.setdefault(layer, {})[k] = (before, after)
        tables[(layer, k)] = (a, b)

    # install: per layer one multiply-add whose coefficients are per-call graph inputs
    for g in shallow:
        m = ctx.graphs[g].onnx
        for layer in wanted:
            tensor = where[g][layer][0]
            c = int(tables[next(key for key in tables if key[0] == layer)][0].shape[0])
            m = insert_channel_fma(m, tensor, f"cache.qscale.{layer}", f"cache.qshift.{layer}", c)
        ctx.graphs[g].onnx = m
        ctx.graphs[g].computes += " + DEC quantization correction (per-call a2, b2)"
    for k, call in enumerate(ctx.calls):
        if graphs_of[k] not in shallow:
            continue
        for layer in wanted:
            a, b = tables[(layer, k)]
            ks, kb = f"cache.qscale.{layer}.{k:04d}", f"cache.qshift.{layer}.{k:04d}"
            ctx.tables[ks], ctx.tables[kb] = a, b
            call.extra.setdefault("tables", {}).update({f"cache.qscale.{layer}": ks, f"cache.qshift.{layer}": kb})

    def mean(layer, i):
        return float(np.mean([v[i] for v in stats[layer].values()]))

    ctx.passes.append({
        "name": "correct",
        "method": "CacheQuant DEC quantization correction: per-call, per-output-channel a2*y + b2 after the "
                  "first convs consuming the cached feature (multiply-add, INT8 weights shared)",
        "config": cfg.to_json(),
        "layers": {layer: {"tensor": where[shallow[0]][layer][0], "cache_half_only": where[shallow[0]][layer][1],
                           "rel_rmse_before": mean(layer, 0), "rel_rmse_after": mean(layer, 1)}
                   for layer in wanted},
        "summary": ", ".join(f"{layer} rel. RMSE {mean(layer, 0):.3f} -> {mean(layer, 1):.3f}" for layer in wanted),
        "calls": sorted({k for _, k in tables}),
    })
