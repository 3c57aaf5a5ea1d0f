"""Q/DQ graphs: ONNX Runtime's ``quantize_static`` inserts the nodes, dmc decides every scale.

Steps for one graph variant:

1. ``prepare_graph``: shortcut splitting (``split.py``), layer names, the float-island policy and
   the list of layers to quantize, then ``quant_pre_process(skip_symbolic_shape=True)``, file to
   file in a scratch folder where the weights stay (``PreparedGraph``).
2. ``record_stats``: the prepared FP graph, with every tensor that will be quantized added as a
   graph output, runs in ONNX Runtime over the calibration feeds.
3. dmc's ranges (``ranges.py``) become activation (scale, zero point) pairs.
4. ``build_qdq``: ``quantize_static`` (QDQ format, per-channel weights) reads them from a
   calibration cache (``calibration_cache_path``, so ORT runs no calibration of its own) and from
   ``extra_options["TensorQuantOverrides"]`` with explicit scale and zero point per tensor;
   ``verify_scales`` then checks that every activation scale in the written graph is dmc's,
   bit for bit, and every weight scale is the symmetric per-channel max|W|/qmax.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from dmc.errors import DmcError
from dmc.export import external
from dmc.export.external import WeightsWriter, save_model, serialize
from dmc.quantize.profiles import Profile, weight_axis
from dmc.quantize.ranges import ActivationStats, QParams, quantize_weights, weight_scales
from dmc.quantize.split import SPLIT_TAG, split_concat_convs
from dmc.quantize.stream import stream_tensors
from dmc.scratch import scratch_folder

# Conditioning-path layers (timestep / class / adaLN MLPs): per-sample vectors, negligible compute,
# and the most sensitive place to add noise. Matched against layer names.
TIME_EMBEDDING_PATTERNS = ("*time_embedding*", "*time_emb_proj*", "*timestep_embedder*", "*time_proj*",
                           "*class_embedding*", "*class_embedder*", "*add_embedding*", "*.emb.*",
                           "*norm1.linear", "*norm_out.linear", "*norm1_context.linear", "*proj_out_1",
                           "*adaln*", "*adaLN*",
                           # Diffusion Policy: the step-embedding MLP and the FiLM projections (one row per chunk)
                           "*diffusion_step_encoder*", "*cond_encoder*")


@dataclass(eq=False)
class PreparedGraph:
    """The split, pre-processed FP32 graph. ``model`` is its structure only: the weights stay on
    disk in ``folder`` (a scratch folder that lives as long as this object), since a full-size
    UNet's graph held in memory next to the torch model is what pushed an SD 1.5 INT8 compile to
    6.5x its FP32 bytes. Tools open it by path (``write``); ``weight`` reads one tensor."""

    model: onnx.ModelProto
    layers: dict[str, str]  # node name -> layer name, for every layer that will be quantized
    islands: dict[str, str]  # layer name -> why it stays float
    splits: list[dict] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)  # activation tensors to calibrate
    island_nodes: dict[str, str] = field(default_factory=dict)  # node name -> layer name of float islands
    stream: list[str] = field(default_factory=list)  # residual-stream tensors (``residual_stream``)
    folder: Path | None = None

    @property
    def calibrated(self) -> list[str]:
        """Every tensor that gets a range: the quantized layers' inputs, then the residual stream."""
        return self.tensors + [t for t in self.stream if t not in self.tensors]

    def write(self, name: str) -> Path:
        """The graph as ``folder/<name>.onnx``, next to the weights its external data points at."""
        path = self.folder / f"{name}.onnx"
        path.write_bytes(serialize(self.model))
        return path

    def weight(self, name: str) -> np.ndarray:
        init = next(i for i in self.model.graph.initializer if i.name == name)
        return numpy_helper.to_array(init, base_dir=str(self.folder))

    @property
    def weight_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.glob("*.data"))


def layer_name(node: onnx.NodeProto, initializer_names: set) -> str:
    """A layer's identity across graph variants: its weight initializer's name (the torch
    parameter path), or the torch module path recorded by the exporter when the weight was a
    folded constant (e.g. a transposed Linear weight called ``val_123``)."""
    w = node.input[1] if len(node.input) > 1 else ""
    base, tag, idx = w.partition(SPLIT_TAG)
    suffix = f"{tag}{idx}" if tag else ""
    if base.endswith(".weight"):
        return base[: -len(".weight")] + suffix
    scopes = _name_scopes(node)
    if len(scopes) >= 2 and scopes[-2]:
        return scopes[-2] + suffix
    return w or node.name


def _name_scopes(node: onnx.NodeProto) -> list[str]:
    """The torch module path the exporter recorded for ``node`` (empty when absent or unreadable)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return list(ast.literal_eval(prop.value))
            except (ValueError, SyntaxError):
                return []
    return []


def is_activation_matmul(node: onnx.NodeProto, initializer_names: set) -> bool:
    """A MatMul of two activations: attention's scores (Q K^T) and its weighted sum (P V)."""
    return (node.op_type == "MatMul" and len(node.input) == 2
            and not any(i in initializer_names for i in node.input))


def activation_matmul_names(model: onnx.ModelProto, initializer_names: set) -> dict[str, str]:
    """Node name -> layer name of every activation MatMul: its torch module and its rank there
    (``...attentions.0.attn1.matmul0`` = the scores, ``matmul1`` = P V), the same in every graph
    variant, so ranges and coverage line up across variants."""
    seen: dict[str, int] = {}
    out = {}
    for n in model.graph.node:
        if is_activation_matmul(n, initializer_names):
            scope = next((sc for sc in reversed(_name_scopes(n)[:-1]) if sc), "matmul")
            k = seen.get(scope, 0)
            seen[scope] = k + 1
            out[n.name] = f"{scope}.matmul{k}"
    return out


def _topo_first_last(model: onnx.ModelProto, candidates: dict[str, onnx.NodeProto]) -> tuple[set, set]:
    graph = model.graph
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # first: layers reached from the sample input without passing through another layer
    first, seen = set(), set()
    frontier = [i.name for i in graph.input if i.name == "sample"] or [graph.input[0].name]
    while frontier:
        t = frontier.pop()
        for n in consumers.get(t, []):
            if n.name in seen or n.op_type in ("Shape", "Size"):  # shape arithmetic, not data
                continue
            seen.add(n.name)
            if n.name in candidates:
                first.add(n.name)
            else:
                frontier.extend(n.output)
    # last: the last layer (graph order) that the prediction output depends on
    producers = {o: n for n in graph.node for o in n.output}
    ancestors, stack = set(), [graph.output[0].name]
    while stack:
        t = stack.pop()
        n = producers.get(t)
        if n is None or n.name in ancestors:
            continue
        ancestors.add(n.name)
        stack.extend(n.input)
    order = [n.name for n in graph.node if n.name in candidates and n.name in ancestors]
    return first, ({order[-1]} if order else set())


def island_rules(model: onnx.ModelProto, candidates: dict[str, onnx.NodeProto]) -> dict:
    """The ``keep_float`` policy words: each a test ``(node name, layer name) -> stays float``."""
    first, last = _topo_first_last(model, candidates)
    return {
        "first": lambda nm, layer: nm in first,
        "last": lambda nm, layer: nm in last,
        "time_embedding": lambda nm, layer: any(fnmatch.fnmatch(layer, p) for p in TIME_EMBEDDING_PATTERNS),
    }


def _pre_process(src: Path) -> onnx.ModelProto:
    """``quant_pre_process`` from ``src`` to ``pre.onnx`` beside it (weights in ``pre.onnx.data``);
    returns the result's structure and removes ``src``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = src.with_name("pre.onnx")
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, save_as_external_data=True,
                      all_tensors_to_one_file=True, external_data_location="pre.onnx.data")
    for f in src.parent.glob(src.name + "*"):
        f.unlink()
    return onnx.load(str(dst), load_external_data=False)


def _unshare_weights(model: onnx.ModelProto, nodes: set) -> None:
    """Give every quantized layer its own weight initializer: ORT refuses weights shared by
    several nodes ("Quantization parameter shared mode is not supported for weight")."""
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for n in model.graph.node:
        if n.name in nodes and len(n.input) > 1 and uses.get(n.input[1], 0) > 1 and n.input[1] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[n.input[1]])
            copy.name = f"{n.input[1]}.{n.name}"
            model.graph.initializer.append(copy)
            uses[n.input[1]] -= 1
            n.input[1] = copy.name


def prepare_graph(model: onnx.ModelProto, cfg, profile: Profile, release=None) -> PreparedGraph:
    """Analyse, split and pre-process ``model`` into a scratch folder. ``release`` (optional) is
    called once the weights are on disk and the graph has layers to quantize, so the caller can
    drop its in-memory graph before the pre-processing copies it again."""
    splits = []
    private = cfg.split_concat  # the split returns a copy, which may be emptied while writing
    if cfg.split_concat:
        model, splits = split_concat_convs(model)
    inits = {i.name for i in model.graph.initializer}
    candidates = {}
    for n in model.graph.node:
        if n.op_type not in cfg.op_types or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if n.input[0] in inits:
            continue
        if n.op_type == "Gemm" and any(a.name == "transA" and a.i for a in n.attribute):
            continue
        candidates[n.name] = n
    names = {nm: layer_name(n, inits) for nm, n in candidates.items()}
    if cfg.quantizes_attention(profile) and "MatMul" in cfg.op_types:
        names.update(activation_matmul_names(model, inits))
    rules = island_rules(model, candidates)
    islands: dict[str, str] = {}
    for nm, layer in names.items():
        for rule in cfg.keep_float:
            keep = rules.get(rule)
            if keep is not None and keep(nm, layer):
                islands[layer] = rule
            elif keep is None and fnmatch.fnmatch(layer, rule):
                islands[layer] = f"pattern {rule}"
            if layer in islands:
                break
    layers = {nm: layer for nm, layer in names.items() if layer not in islands}
    island_nodes = {nm: layer for nm, layer in names.items() if layer in islands}
    prepared = PreparedGraph(None, layers, islands, splits)
    prepared.folder = scratch_folder(prepared, "dmc-q-")
    with WeightsWriter(prepared.folder / "in.onnx.data") as w:
        src = save_model(model, prepared.folder / "in.onnx", w, release=private)
    del model
    if release is not None and layers:
        release()
    pre = _pre_process(src)
    present = {n.name: n for n in pre.graph.node}
    lost = [nm for nm in layers if nm not in present]
    if lost:
        raise DmcError(f"quant_pre_process removed layers {lost[:3]}; cannot quantize this graph")
    _unshare_weights(pre, set(layers))
    present = {n.name: n for n in pre.graph.node}
    tensors: list[str] = []
    graph_outputs = {o.name for o in pre.graph.output}  # ORT never quantizes a graph output
    for nm in layers:
        n = present[nm]
        wanted = [n.input[0]]
        if n.op_type == "MatMul":
            wanted = [i for i in n.input if i not in {t.name for t in pre.graph.initializer}]
        if profile.quantize_outputs and n.output[0] not in graph_outputs:
            wanted.append(n.output[0])
        for t in wanted:
            if t not in tensors:
                tensors.append(t)
    prepared.model, prepared.tensors = pre, tensors
    if cfg.residual_stream:
        prepared.stream = stream_tensors(pre, set(layers))
    prepared.island_nodes = {nm: la for nm, la in island_nodes.items() if nm in present}
    return prepared


STATS_BYTES_PER_RUN = 1 << 30  # activation bytes one stats run may return (bounds memory on big UNets)


def record_stats(prepared: PreparedGraph, batches: list[dict], seed: int,
                 rows_per_run: int = 128, progress: bool = False, rows_key: str = "sample") -> dict[str, ActivationStats]:
    """Run the prepared FP graph over ``batches`` (feed dicts) and collect statistics of its
    ``tensors``.

    Statistics stream: each run's activations update running extremes and a bounded reservoir
    (``ActivationStats``) and are then dropped. The first run takes one row to measure the bytes a
    row returns; later runs take as many rows as fit in ``STATS_BYTES_PER_RUN`` (at most ``rows_per_run``).
    """
    import onnxruntime as ort

    from dmc.export.probe import session_with_outputs
    from dmc.runtimes.onnxruntime_executor import MEM_PATTERN_MAX_WEIGHT_BYTES
    from dmc.progress import bar

    tensors = prepared.calibrated
    session = session_with_outputs(prepared.model, tensors, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   folder=prepared.folder,
                                   mem_pattern=prepared.weight_bytes < MEM_PATTERN_MAX_WEIGHT_BYTES)
    inputs = {i.name for i in session.get_inputs()}
    rng = np.random.default_rng([seed, 0x57A7])
    stats = {t: ActivationStats(rng) for t in tensors}
    total = sum(len(b[rows_key]) for b in batches)  # the input whose first axis counts rows
    step = 1
    with bar(progress, total, "activation statistics", "row") as pbar:
        for feeds in batches:
            n = len(feeds[rows_key])
            s = 0
            while s < n:
                sub = {}
                for k, v in feeds.items():
                    if k not in inputs:
                        continue
                    sub[k] = v[s:s + step] if v.ndim and v.shape[0] == n else v
                rows = min(step, n - s)
                outs = session.run(tensors, sub)
                for t, v in zip(tensors, outs):
                    if not np.isfinite(v).all():
                        raise DmcError(f"non-finite activations (NaN or inf) in tensor {t} during INT8 calibration "
                                       f"(timesteps {sorted(set(np.ravel(sub.get('timestep', [])).tolist()))[:4]}...); "
                                       "the model overflows or its weights are corrupt")
                    stats[t].update(v, rows / total)
                row_bytes = sum(v.nbytes for v in outs) / rows
                del outs
                s += rows
                pbar.update(rows)
                step = int(max(1, min(rows_per_run, STATS_BYTES_PER_RUN // max(row_bytes, 1))))
    return stats


def activation_params(stats: dict[str, ActivationStats], cfg, profile: Profile,
                      progress: bool = False) -> dict[str, QParams]:
    from dmc.progress import bar

    out = {}
    with bar(progress, len(stats), "range search", "tensor") as pbar:
        for t, s in stats.items():
            out[t] = s.params(profile.activation_dtype, profile.symmetric_activations, cfg.range_method,
                              cfg.lp_norm, cfg.search_candidates)
            pbar.update()
    return out


def build_qdq(prepared: PreparedGraph, params: dict[str, QParams], profile: Profile,
              op_types: tuple) -> onnx.ModelProto:
    """Insert Q/DQ with ONNX Runtime, taking every activation scale from ``params``."""
    if not prepared.layers:  # ORT reads an empty nodes_to_quantize as "every node"
        raise DmcError(f"no layer left to quantize (op_types {', '.join(op_types)}; every candidate is a "
                       "float island); add op types or relax keep_float")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    zp_type = np.uint8 if profile.activation_dtype == "uint8" else np.int8
    inits = {i.name for i in prepared.model.graph.initializer}
    params = {t: p for t, p in params.items() if t in prepared.tensors}  # the stream's pairs are dmc's own
    overrides = {t: [{"scale": np.array(p.scale, dtype=np.float32), "zero_point": np.array(p.zero_point, dtype=zp_type)}]
                 for t, p in params.items()}
    ranges = TensorsData(CalibrationMethod.MinMax, {
        t: TensorData(lowest=np.array(p.lo, dtype=np.float32), highest=np.array(p.hi, dtype=np.float32))
        for t, p in params.items()})
    extra = {
        "TensorQuantOverrides": overrides,
        "ActivationSymmetric": profile.symmetric_activations,
        "WeightSymmetric": True,
        # An activation MatMul is quantized only when dmc chose it (nodes_to_quantize says which).
        "MatMulConstBOnly": not any(is_activation_matmul(n, inits) for n in prepared.model.graph.node
                                    if n.name in prepared.layers),
        "QuantizeBias": profile.quantize_bias,
        # Weight scales must not depend on activation scales, so scale-group variants share int8 weights.
        "QDQDisableWeightAdjustForInt32Bias": True,
        "QDQOpTypePerChannelSupportToAxis": {"ConvTranspose": 1, "MatMul": 1},
        # Never drop a Relu/Clip after a quantized layer: its output range is dmc's, not the clipped one.
        "QDQKeepRemovableActivations": True,
    }
    if not profile.quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(op_types)
    with tempfile.TemporaryDirectory(prefix="dmc-qdq-") as tmp:
        dst, cache = (os.path.join(tmp, f) for f in ("int8.onnx", "ranges.json"))
        src = str(prepared.write("fp"))
        save_tensors_data(ranges, cache)
        import logging

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # "Please consider to run pre-processing" (we did)
        try:
            quantize_static(
                src, dst, None, calibration_cache_path=cache, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types), per_channel=True, reduce_range=profile.reduce_range,
                activation_type=QuantType.QUInt8 if profile.activation_dtype == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8, nodes_to_quantize=list(prepared.layers),
                calibrate_method=CalibrationMethod.MinMax, extra_options=extra,
                use_external_data_format=prepared.weight_bytes > external.MAX_PROTO_BYTES,
            )
        finally:
            root.setLevel(level)
        out = onnx.load(dst)
    out.producer_name = "dmc"
    return out


def has_bias(node: onnx.NodeProto) -> bool:
    return node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and bool(node.input[2])


def privatize_dq(qmodel: onnx.ModelProto, layer_nodes) -> int:
    """Rewire every consumer of an activation DequantizeLinear that is not a quantized layer to the
    float tensor the pair quantizes, then drop pairs nothing reads. Returns the inputs rewired.

    Exception: the output of a quantized layer *without bias* keeps one shared pair. OpenVINO
    (2026.4) fuses the quantize into such a bias-free INT8 convolution and a float reader beside
    it then gets wrong values (0.9 dB on conv -> conv + residual; with biases, as in diffusers
    UNets, private pairs agree to 137 dB and shared ones to 63 dB)."""
    g = qmodel.graph
    inits = {i.name for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    rewired = 0
    for node in g.node:
        if node.name in layer_nodes:
            continue
        for i, t in enumerate(node.input):
            dq = producers.get(t)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                continue
            q = producers.get(dq.input[0])
            source = producers.get(q.input[0]) if q is not None else None
            if source is not None and source.name in layer_nodes and not has_bias(source):
                continue
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    graph_outputs = {o.name for o in g.output}
    while True:  # a DQ, then its Q, can become unread
        read = {i for n in g.node for i in n.input} | graph_outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read]
        if not dead:
            return rewired
        for n in dead:
            g.node.remove(n)


WEIGHT_ONLY_QMAX = 127  # float islands compute in float: their stored weights use the full int8 grid


def add_weight_only(qmodel: onnx.ModelProto, prepared: PreparedGraph, op_types: tuple, rules: tuple) -> list[str]:
    """Store the weights of float-island layers kept for one of ``rules`` as int8 (symmetric per
    output channel) behind a DequantizeLinear: activations and arithmetic stay float, the artifact
    shrinks. Returns the layers rewritten."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    uses: dict[str, int] = {}
    for n in qmodel.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    new_nodes, done = [], []
    for node in qmodel.graph.node:
        if node.name not in prepared.island_nodes or node.op_type not in op_types or len(node.input) < 2:
            continue
        reason = prepared.islands[prepared.island_nodes[node.name]]
        if (reason.split()[0] if not reason.startswith("pattern") else "patterns") not in rules:
            continue
        w = node.input[1]
        if w not in inits or uses.get(w, 0) != 1 or inits[w].data_type != onnx.TensorProto.FLOAT:
            continue
        axis = weight_axis(node.op_type, node)
        values = numpy_helper.to_array(inits[w])
        q, scale = quantize_weights(values, axis, WEIGHT_ONLY_QMAX)
        qmodel.graph.initializer.extend([
            numpy_helper.from_array(q, f"{w}_quantized"),
            numpy_helper.from_array(scale, f"{w}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{w}_zero_point")])
        qmodel.graph.initializer.remove(inits[w])
        new_nodes.append(onnx.helper.make_node("DequantizeLinear", [f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"],
                                               [f"{w}_DequantizeLinear_Output"], name=f"{w}_DequantizeLinear",
                                               axis=axis))
        node.input[1] = f"{w}_DequantizeLinear_Output"
        done.append(prepared.island_nodes[node.name])
    for i, n in enumerate(new_nodes):  # constant inputs only: valid anywhere before their consumer
        qmodel.graph.node.insert(i, n)
    return done


def read_scales(model: onnx.ModelProto) -> tuple[dict[str, tuple[float, int]], dict[str, np.ndarray]]:
    """(activation tensor -> (scale, zero point), weight initializer -> per-channel scales) of a Q/DQ graph."""
    inits = {i.name: i for i in model.graph.initializer}
    acts, weights = {}, {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            s = numpy_helper.to_array(inits[n.input[1]])
            z = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 else np.uint8(0)
            acts[n.input[0]] = (float(s), int(z))
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8:
            weights[n.input[0]] = numpy_helper.to_array(inits[n.input[1]])
    return acts, weights


def verify_scales(qmodel: onnx.ModelProto, prepared: PreparedGraph, params: dict[str, QParams],
                  profile: Profile) -> list[str]:
    """Differences between the scales in ``qmodel`` and dmc's (empty = identical)."""
    acts, weights = read_scales(qmodel)
    problems = []
    for t, p in params.items():
        if t not in acts:
            problems.append(f"{t}: no QuantizeLinear in the written graph")
        elif acts[t] != (float(np.float32(p.scale)), int(p.zero_point)):
            problems.append(f"{t}: ORT wrote {acts[t]}, dmc computed {(p.scale, p.zero_point)}")
    nodes = {n.name: n for n in prepared.model.graph.node}
    inits = {i.name for i in prepared.model.graph.initializer}
    for nm in prepared.layers:
        node = nodes[nm]
        if is_activation_matmul(node, inits):
            continue  # no weight: both inputs are activations, checked above
        w = node.input[1]
        q = next((k for k in weights if k in (f"{w}_quantized", w)), None)
        if q is None:
            problems.append(f"{nm}: weight {w} was not quantized")
            continue
        want = weight_scales(prepared.weight(w), weight_axis(node.op_type, node), profile.weight_qmax)
        if not np.array_equal(np.asarray(weights[q]).reshape(-1), want.reshape(-1)):
            problems.append(f"{nm}: weight scales differ from max|W|/{profile.weight_qmax}")
    return problems
