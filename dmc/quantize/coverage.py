"""INT8 coverage, proved on the graph ONNX Runtime actually executes.

A Q/DQ graph only says what *could* run in integer arithmetic; ONNX Runtime's graph optimiser
decides what does (it fuses DQ -> Conv -> Q into QLinearConv, and silently leaves a Conv in
float when a pattern does not match). ``coverage`` builds a CPU session with
``optimized_model_filepath`` set, reads the optimised graph back and counts the layers that run
as integer kernels against those that run in float.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

CATEGORIES = {
    "conv": {"int8": ("QLinearConv", "ConvInteger", "NhwcQLinearConv"),
             "float": ("Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose")},
    "matmul": {"int8": ("QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                        "QAttention"),
               "float": ("MatMul", "FusedMatMul", "Attention", "MultiHeadAttention")},
    "gemm": {"int8": ("QGemm", "DynamicQuantizeLSTM"), "float": ("Gemm", "FusedGemm")},
}


def count_ops(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Per category, how many int8 and float kernels a graph holds."""
    counts = {c: {"int8": 0, "float": 0} for c in CATEGORIES}
    for node in model.graph.node:
        for cat, kinds in CATEGORIES.items():
            for kind, ops in kinds.items():
                if node.op_type in ops:
                    counts[cat][kind] += 1
    return counts


def optimized_graph(model: onnx.ModelProto | str | Path, level: str = "extended") -> onnx.ModelProto:
    """The graph an ONNX Runtime CPU session runs after its optimiser (``level``: basic/extended/all).

    ``extended`` applies the QDQ fusions without the hardware-specific NCHWc layout rewrites of
    ``all`` (which rename Conv into com.microsoft.nchwc.Conv but do not change what is integer).
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory(prefix="dmc-cov-") as tmp:
        if isinstance(model, onnx.ModelProto):
            from dmc.export.external import save_for_tool

            src = str(save_for_tool(model, tmp, "in"))  # weights as external data: any size
        else:
            src = str(model)
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        # Keep optimised initializers of small in-memory graphs inline (the returned model must not
        # point into a temp folder); files and >2 GB graphs put them in a side file (only nodes are read).
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         "optimized.onnx.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                         str(1 << 40 if isinstance(model, onnx.ModelProto) and not _big(model)
                                             else 1 << 10))
        ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath, load_external_data=False)


def _big(model: onnx.ModelProto) -> bool:
    from dmc.export.external import needs_external

    return needs_external(model)


def coverage(model: onnx.ModelProto | str | Path, level: str = "extended") -> dict[str, dict[str, int]]:
    """``{"conv": {"int8": 38, "float": 2}, "matmul": {...}, "gemm": {...}}`` after ORT optimisation."""
    return count_ops(optimized_graph(model, level))


def requested(model: onnx.ModelProto) -> dict[str, int]:
    """Per category, how many layers of a Q/DQ graph have a dequantized constant weight *and* a
    dequantized activation input, or are MatMuls of two dequantized activations, i.e. were meant to
    run in INT8 (weight-only float islands are not)."""
    inits = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    cat_of = {"Conv": "conv", "ConvTranspose": "conv", "MatMul": "matmul", "Gemm": "gemm"}
    out = {c: 0 for c in CATEGORIES}
    for node in model.graph.node:
        if node.op_type in cat_of and len(node.input) > 1:
            p = producers.get(node.input[1])
            a = producers.get(node.input[0])
            activation_matmul = node.op_type == "MatMul" and node.input[1] not in inits
            if (p is not None and p.op_type == "DequantizeLinear" and (p.input[0] in inits or activation_matmul)
                    and a is not None and a.op_type == "DequantizeLinear"):
                out[cat_of[node.op_type]] += 1
    return out


def summary_line(cov: dict[str, dict[str, int]]) -> str:
    """``int8: 38/40 convs, 12/24 matmuls`` for ``dmc inspect``."""
    parts = []
    for cat, plural in (("conv", "convs"), ("matmul", "matmuls"), ("gemm", "gemms")):
        c = cov.get(cat, {})
        total = c.get("int8", 0) + c.get("float", 0)
        if total:
            parts.append(f"{c.get('int8', 0)}/{total} {plural}")
    return "int8: " + (", ".join(parts) if parts else "no layers")
