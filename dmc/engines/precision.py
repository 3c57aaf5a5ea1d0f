"""INT8 proved, not assumed: the precision each engine layer really got.

The engine inspector (``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``,
with ``ProfilingVerbosity.DETAILED`` at build time) lists the engine's layers, each with its
``Name``, ``LayerType``, ``Inputs``/``Outputs`` (each with a ``Format/Datatype`` string such as
``"Int8 NC/32HW32"`` or ``"Channel major FP16 format where channel % 8 == 0"``) and ``Metadata``
naming the ONNX nodes it came from (``"[ONNX Layer: /conv_in/Conv]"``). A fused layer covers
several ONNX nodes; its compute precision is the data type of its first (activation) input.
The layers the artifact meant as INT8 are its Q/DQ graph's weight layers whose weight and
activation are both dequantized (the same rule as ``dmc.quantize.coverage.requested``).
"""

from __future__ import annotations

import json
import re

import onnx

LAYER_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_DTYPES = (("int8", re.compile(r"int8", re.I)), ("fp8", re.compile(r"fp8", re.I)),
           ("bf16", re.compile(r"bf16", re.I)), ("fp16", re.compile(r"fp16|half", re.I)),
           ("fp32", re.compile(r"fp32|float", re.I)), ("int32", re.compile(r"int32", re.I)))


def intended_int8_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the ONNX nodes of a Q/DQ graph that were meant to run in INT8."""
    inits = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    names = []
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        w, a = producers.get(node.input[1]), producers.get(node.input[0])
        if (w is not None and w.op_type == "DequantizeLinear" and w.input[0] in inits
                and a is not None and a.op_type == "DequantizeLinear"):
            names.append(node.name)
    return names


def dtype_of(format_string: str) -> str:
    for name, pattern in _DTYPES:
        if pattern.search(format_string or ""):
            return name
    return "unknown"


def parse_layers(engine_json: str | dict) -> list[dict]:
    """``[{"name", "type", "precision", "onnx_nodes"}]`` from the inspector's engine JSON.

    Accepts both 10.x (``Bindings``) and 11.x (``I/O Tensors``) documents; layers given as bare
    names (an engine built without DETAILED profiling verbosity) get precision ``unknown``.
    """
    data = json.loads(engine_json) if isinstance(engine_json, str) else engine_json
    out = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):
            out.append({"name": layer, "type": "", "precision": "unknown", "onnx_nodes": [layer]})
            continue
        name = layer.get("Name", "")
        nodes = _ONNX_LAYER.findall(layer.get("Metadata", "") or "")
        if not nodes:  # no metadata: fused names read "a + b + c"
            nodes = [p.strip() for p in name.split(" + ") if p.strip()]
        if "Precision" in layer:
            precision = dtype_of(str(layer["Precision"]))
        else:
            inputs = layer.get("Inputs") or []
            precision = dtype_of(inputs[0].get("Format/Datatype", "")) if inputs else "unknown"
        out.append({"name": name, "type": layer.get("LayerType", ""), "precision": precision, "onnx_nodes": nodes})
    return out


def io_tensor_names(engine_json: str | dict) -> list[str]:
    data = json.loads(engine_json) if isinstance(engine_json, str) else engine_json
    if "I/O Tensors" in data:  # TensorRT 11
        return [t["Name"] for t in data["I/O Tensors"]]
    return list(data.get("Bindings", []))


def precision_report(layers: list[dict], intended: list[str]) -> dict:
    """Which intended-INT8 layers really ran INT8, which fell back (and to what), which were not found."""
    by_node = {}
    for layer in layers:
        for node in layer["onnx_nodes"]:
            by_node.setdefault(node, layer)
    proved, fell_back, unmatched = [], {}, []
    for node in intended:
        layer = by_node.get(node)
        if layer is None:
            unmatched.append(node)
        elif layer["precision"] == "int8":
            proved.append(node)
        else:
            fell_back[node] = layer["precision"]
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer["precision"]] = counts.get(layer["precision"], 0) + 1
    return {"intended_int8": len(intended), "int8": len(proved), "fell_back": fell_back,
            "unmatched": unmatched, "layers": len(layers), "layer_precisions": counts}


def report_problem(variant: str, report: dict) -> str | None:
    """One line when some intended-INT8 layers are not proved INT8, else None."""
    bad = len(report["fell_back"]) + len(report["unmatched"])
    if not report["intended_int8"] or not bad:
        return None
    parts = []
    if report["fell_back"]:
        first, prec = next(iter(report["fell_back"].items()))
        parts.append(f"{len(report['fell_back'])} ran in float (e.g. {first}: {prec})")
    if report["unmatched"]:
        parts.append(f"{len(report['unmatched'])} not found in the engine (e.g. {report['unmatched'][0]})")
    return (f"{variant}: only {report['int8']} of {report['intended_int8']} INT8 layers run INT8 in the "
            f"engine; " + ", ".join(parts))


def summary_line(report: dict) -> str:
    precs = ", ".join(f"{k} {v}" for k, v in sorted(report["layer_precisions"].items()))
    if report["intended_int8"]:
        return f"int8 {report['int8']}/{report['intended_int8']} intended layers; layers: {precs}"
    return f"layers: {precs}"
