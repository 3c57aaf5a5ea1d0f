"""A quantized residual stream (``QuantizeConfig.residual_stream``): the speed side of the INT8 trade.

dmc's default keeps the tensors *between* quantized layers float: conv outputs, residual adds and skip
concats, which every GroupNorm, residual add and concat then reads at 4 bytes an element. NNCF's
default quantizes them, and on a CPU whose INT8 convolutions are cheap (AMX, VNNI) that float glue
decides a call: OpenVINO reorders a float tensor from the convolution's blocked layout before each
GroupNorm and runs a standalone FakeQuantize where a conv's output also has float readers
(BENCHMARKS.md #17, trained mid-size UNet, 1 thread: 168 -> 139 ms a call, NNCF's 139; verified at 46.7
dB against torch instead of 52.5, NNCF's default keeps 29.6).

Here each stream tensor gets one Q/DQ pair that *every* reader shares (OpenVINO then fuses the
quantize into the producing convolution or add and runs the readers on int8), scaled by dmc's range
search on the model's own trajectory like every other activation. Outputs of float islands stay float:
a shared pair behind the float first convolution is where OpenVINO's lowering parted from ONNX's
Q/DQ semantics (31 dB between the two runtimes, 48 dB elsewhere). The GroupNorms' normalized outputs
are quantized too (NNCF does the same): zero mean and unit variance in every group, so one scale fits
them all (0.5 dB per call), and OpenVINO's MVN then writes int8 (149 -> 140 ms a call).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

STREAM_OPS = ("Conv", "ConvTranspose", "Add", "Concat", "InstanceNormalization")
PAIR_TAG = "_stream"


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor whose shape onnx's inference (or the pre-processing) recorded."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if v.type.tensor_type.HasField("shape"):
            out[v.name] = len(v.type.tensor_type.shape.dim)
    return out


def stream_tensors(model: onnx.ModelProto, layers: set[str]) -> list[str]:
    """The residual stream of ``model``: 4-D outputs of the quantized convolutions (``layers``: node
    names), of Adds of two activations (residual and time-embedding adds) and of Concats (skip
    connections), and the normalized output of every GroupNorm (its InstanceNormalization, before the
    affine), graph outputs excepted."""
    inits = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    ranks = _ranks(model)
    found = []
    for n in model.graph.node:
        if n.op_type not in STREAM_OPS or not n.output or n.output[0] in outputs:
            continue
        if n.op_type in ("Conv", "ConvTranspose") and n.name not in layers:
            continue  # a float island's output stays float (see the module docstring)
        if n.op_type in ("Add", "Concat") and any(i in inits for i in n.input):
            continue  # a bias or constant, not the stream
        if n.op_type == "InstanceNormalization" or ranks.get(n.output[0]) == 4:
            found.append(n.output[0])
    return found


def quantize_stream(model: onnx.ModelProto, tensors: list[str], params: dict) -> int:
    """Give each of ``tensors`` one Q/DQ pair (symmetric int8, ``params[t]``) read by all its
    consumers; a tensor that already has a pair (the input of a quantized layer, same scale) shares
    that one. Shape reads keep the float tensor. Returns the pairs added."""
    g = model.graph
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer_index = {o: k for k, n in enumerate(g.node) for o in n.output}
    inserts: dict[int, list] = {}
    added = 0
    for t in tensors:
        readers = consumers.get(t, [])
        q = next((c for c in readers if c.op_type == "QuantizeLinear"), None)
        dq = next((c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None) if q else None
        if dq is None:
            p = params[t]
            scale = numpy_helper.from_array(np.array(p.scale, np.float32), f"{t}{PAIR_TAG}_scale")
            zero = numpy_helper.from_array(np.array(p.zero_point, np.int8), f"{t}{PAIR_TAG}_zero_point")
            g.initializer.extend([scale, zero])
            q = helper.make_node("QuantizeLinear", [t, scale.name, zero.name], [f"{t}{PAIR_TAG}_q"],
                                 name=f"{t}{PAIR_TAG}_QuantizeLinear")
            dq = helper.make_node("DequantizeLinear", [q.output[0], scale.name, zero.name], [f"{t}{PAIR_TAG}_dq"],
                                  name=f"{t}{PAIR_TAG}_DequantizeLinear")
            inserts.setdefault(producer_index.get(t, -1), []).extend([q, dq])
            added += 1
        for c in readers:
            if c.op_type in ("QuantizeLinear", "Shape"):
                continue
            for k, i in enumerate(c.input):
                if i == t:
                    c.input[k] = dq.output[0]
    nodes = list(g.node)
    ordered = list(inserts.get(-1, []))
    for k, n in enumerate(nodes):  # each new pair right after its producer keeps the graph sorted
        ordered.append(n)
        ordered.extend(inserts.get(k, []))
    del g.node[:]
    g.node.extend(ordered)
    return added


def is_stream_pair(q: onnx.NodeProto, consumers: dict[str, list]) -> bool:
    """A QuantizeLinear of the residual stream: its tensor has no float reader but shape reads, and
    every reader of its DequantizeLinear takes the shared value (check_profile's rule)."""
    return all(c.op_type in ("QuantizeLinear", "Shape") for c in consumers.get(q.input[0], []))
