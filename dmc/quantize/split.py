"""Q-Diffusion shortcut splitting as an exact ONNX rewrite.

A U-Net decoder block concatenates the upsampled deep feature with the encoder skip; the two
channel groups differ in range by up to ~200x, so one activation scale for the concatenation
wastes most of the grid on one of them. ``Conv(concat(a, b), W) + bias`` equals
``Conv(a, W[:, :Ca]) + Conv(b, W[:, Ca:]) + bias``, so the rewrite gives each input group its
own conv, and therefore its own activation quantizer (and its own per-channel weight scales),
while computing the same function in floating point.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from dmc.export.external import copy_model, skeleton

SPLIT_TAG = ".split"


def _channels(model: onnx.ModelProto) -> dict[str, int]:
    """Dim 1 of every tensor whose shape is known (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(skeleton(model))  # structure only: any size
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField("dim_value"):
            out[vi.name] = dims[1].dim_value
    for init in model.graph.initializer:
        if len(init.dims) >= 2:
            out[init.name] = init.dims[1]
    return out


def split_concat_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    """Rewrite every ``Conv(Concat(x_1..x_n, axis=1))`` (group 1, constant weight) into n convs and adds.

    Returns the new model (the input is not modified) and one record per split conv:
    ``{"node": conv name, "weight": weight name, "inputs": [...], "channels": [c_1, ...]}``.
    """
    model = copy_model(model)  # no serialization: any size
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    channels = None
    records, new_nodes, used_weights = [], [], set()
    for node in graph.node:
        concat = producers.get(node.input[0]) if node.op_type == "Conv" and node.input else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (concat is None or concat.op_type != "Concat" or attrs.get("group", 1) != 1
                or len(node.input) < 2 or node.input[1] not in inits or len(concat.input) < 2):
            new_nodes.append(node)
            continue
        axis = {a.name: helper.get_attribute_value(a) for a in concat.attribute}.get("axis")
        w = numpy_helper.to_array(inits[node.input[1]])
        if axis not in (1, 1 - w.ndim):
            new_nodes.append(node)
            continue
        if channels is None:
            channels = _channels(model)
        sizes = [channels.get(x) for x in concat.input]
        if None in sizes or sum(sizes) != w.shape[1]:
            new_nodes.append(node)
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        parts, start = [], 0
        for i, (x, c) in enumerate(zip(concat.input, sizes)):
            wname = f"{node.input[1]}{SPLIT_TAG}{i}"
            graph.initializer.append(numpy_helper.from_array(w[:, start:start + c].copy(), wname))
            start += c
            inputs = [x, wname] + ([bias] if bias and i == 0 else [])  # the bias is added once
            out = f"{node.output[0]}{SPLIT_TAG}{i}"
            part = helper.make_node("Conv", inputs, [out], name=f"{node.name}{SPLIT_TAG}{i}")
            part.attribute.extend(node.attribute)
            new_nodes.append(part)
            parts.append(out)
        acc = parts[0]
        for j, p in enumerate(parts[1:], start=1):
            out = node.output[0] if j == len(parts) - 1 else f"{node.output[0]}{SPLIT_TAG}sum{j}"
            new_nodes.append(helper.make_node("Add", [acc, p], [out], name=f"{node.name}{SPLIT_TAG}add{j}"))
            acc = out
        used_weights.add(node.input[1])
        records.append({"node": node.name, "weight": node.input[1], "inputs": list(concat.input),
                        "channels": [int(s) for s in sizes]})
    if not records:
        return model, []
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in still_used or t.name not in used_weights]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # Concats that fed only the split convs are now dead.
    alive = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    live_nodes = [n for n in graph.node if n.op_type != "Concat" or any(o in alive for o in n.output)]
    del graph.node[:]
    graph.node.extend(live_nodes)
    return model, records
