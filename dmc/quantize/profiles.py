"""INT8 target profiles and ``check_profile``, which validates a Q/DQ graph against one.

``ort-cpu``: what runs fastest in ONNX Runtime on an AVX2 CPU without VNNI (environment.md §3):
u8 asymmetric activations, s8 symmetric per-channel weights with ``reduce_range`` (7-bit, so
``vpmaddubsw`` cannot saturate), Q/DQ on each quantized layer's input *and output* (ORT only fuses
DQ -> Conv -> Q into QLinearConv when the output is quantized), Conv / Gemm / weight MatMul only.

``trt``: TensorRT explicit quantization: int8 everywhere with zero point 0, per-tensor activation
scales, per-channel weights (axis 0, axis 1 for ConvTranspose / MatMul B), plain
QuantizeLinear/DequantizeLinear (opset >= 13) and nothing else, Q/DQ on layer inputs only, biases
left in float (TensorRT has no int32 dequantize).

``ov-cpu``: what OpenVINO reproduces: the ``trt`` rules (symmetric int8, Q/DQ on layer inputs
only, float bias) plus *private* Q/DQ: a DequantizeLinear feeds quantized layers only; residual
adds, norms, concats and shape reads take the float tensor (except beside the quantized layer that
produced it when that layer has no bias, see ``qdq.privatize_dq``). ONNX Runtime's quantizer shares one DQ
among every consumer of a tensor; OpenVINO's low-precision transformations propagate such a shared
dequantize into the float consumers differently from ONNX's Q/DQ semantics (16-18 dB apart on
the demo UNet, see BENCHMARKS.md #17), while private pairs agree to ~50 dB per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from dmc.quantize.stream import STREAM_OPS, is_stream_pair

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INTEGER_OPS = ("QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear",
               "QGemm", "QLinearAdd", "QLinearMul", "QLinearSoftmax", "QAttention", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
               "QLinearAveragePool", "QLinearGlobalAveragePool")
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Profile:
    name: str
    activation_dtype: str  # "uint8" | "int8"
    symmetric_activations: bool
    reduce_range: bool  # 7-bit weights (ORT on CPUs without VNNI)
    quantize_outputs: bool  # Q/DQ on layer outputs too (needed for ORT's QLinearConv fusion)
    quantize_bias: bool  # int32 bias (ORT's QLinearConv wants it; TensorRT cannot take it)
    min_opset: int = 13
    private_dq: bool = False  # activation DQ outputs feed quantized layers only (float consumers read float)
    backend: str = "onnxruntime"  # the runtime whose INT8 kernels the profile targets
    # Quantize attention's activation MatMuls by default. OpenVINO runs the INT8 MHA as one fused
    # kernel (41 -> 40 ms of a mid-size UNet call, the float one 83 ms); ONNX Runtime on AVX2 without
    # VNNI gains nothing on QLinearMatMul and its QLinearSoftmax costs 8x the float softmax
    # (BENCHMARKS.md #17), so ort-cpu keeps attention float.
    attention_int8: bool = False
    # Whether ``residual_stream`` (shared Q/DQ on conv outputs, residual adds and skip concats,
    # ``dmc.quantize.stream``) is a valid graph of this profile; measured on OpenVINO only.
    allows_residual_stream: bool = False

    @property
    def weight_qmax(self) -> int:
        return 64 if self.reduce_range else 127


PROFILES = {
    "ort-cpu": Profile("ort-cpu", "uint8", False, True, True, True),
    "trt": Profile("trt", "int8", True, False, False, False, backend="tensorrt"),
    "ov-cpu": Profile("ov-cpu", "int8", True, False, False, False, private_dq=True, backend="openvino",
                      attention_int8=True, allows_residual_stream=True),
}


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown INT8 profile {profile!r} (have: {', '.join(PROFILES)})")
    return PROFILES[profile]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def weight_axis(op_type: str, node: onnx.NodeProto | None = None) -> int:
    """The output-channel axis of a layer's weight."""
    if op_type == "ConvTranspose" or op_type == "MatMul":
        return 1
    if op_type == "Gemm" and node is not None:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0


def _qdq_dtype(node: onnx.NodeProto, inits: dict) -> int | None:
    """Element type of the integer side of a Q or DQ node."""
    if node.op_type == "DequantizeLinear" and node.input[0] in inits:
        return inits[node.input[0]].data_type
    if len(node.input) > 2 and node.input[2] in inits:
        return inits[node.input[2]].data_type
    for a in node.attribute:
        if a.name == "output_dtype" and a.i:
            return a.i
    return onnx.TensorProto.UINT8 if node.op_type == "QuantizeLinear" else None


def check_profile(model: onnx.ModelProto, profile: str | Profile, residual_stream: bool = False) -> list[str]:
    """Problems that keep ``model`` from being a valid graph of ``profile`` (empty list = valid).
    ``residual_stream``: the graph was compiled with one (``QuantizeConfig.residual_stream``), so
    shared pairs on stream tensors are intended, not ONNX Runtime's shared placement."""
    prof = get_profile(profile)
    problems: list[str] = []
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    producers = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    if _opset(model) < prof.min_opset:
        problems.append(f"opset {_opset(model)} < {prof.min_opset} (per-channel Q/DQ needs opset 13)")
    want_act = onnx.TensorProto.UINT8 if prof.activation_dtype == "uint8" else onnx.TensorProto.INT8
    n_qdq = 0
    for node in graph.node:
        if node.op_type in INTEGER_OPS:
            problems.append(f"{node.name}: {node.op_type} is not plain Q/DQ (the graph must stay in QDQ format)")
            continue
        if node.op_type not in QDQ_OPS:
            continue
        n_qdq += 1
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name}: {node.op_type} in domain {node.domain!r} (use the standard op)")
        if len(node.input) < 2 or node.input[1] not in inits:
            problems.append(f"{node.name}: scale is not a constant")
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            problems.append(f"{node.name}: scale must be finite and positive")
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        dtype = _qdq_dtype(node, inits)
        is_weight = node.op_type == "DequantizeLinear" and node.input[0] in inits
        if is_weight and dtype == onnx.TensorProto.INT32:
            if not prof.quantize_bias:
                problems.append(f"{node.name}: int32 (bias) DequantizeLinear is not supported by {prof.name}")
            continue
        if is_weight:
            w = numpy_helper.to_array(inits[node.input[0]])
            users = [c for c in consumers.get(node.output[0], []) if c.op_type in WEIGHT_OPS]
            if dtype != onnx.TensorProto.INT8:
                problems.append(f"{node.name}: weights must be int8, got {onnx.TensorProto.DataType.Name(dtype)}")
            if zp is not None and np.any(zp != 0):
                problems.append(f"{node.name}: weight zero point must be 0 (symmetric weights)")
            weight_only = users and not any(
                c.input[0] in producers and producers[c.input[0]].op_type == "DequantizeLinear" for c in users)
            if weight_only and not prof.quantize_outputs and users[0].op_type in ("Conv", "ConvTranspose"):
                problems.append(f"{node.name}: weight-only int8 {users[0].op_type} (float activations) is not "
                                f"supported by {prof.name}; keep this island's weights float")
            if (prof.reduce_range and not weight_only and w.size
                    and np.abs(w.astype(np.int32)).max() > prof.weight_qmax):
                problems.append(f"{node.name}: weights exceed the reduce_range grid [-{prof.weight_qmax}, "
                                f"{prof.weight_qmax}] (saturates vpmaddubsw without VNNI)")
            if scale.size > 1 and users:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                want = weight_axis(users[0].op_type, users[0])
                if axis % w.ndim != want:
                    problems.append(f"{node.name}: per-channel axis {axis} but {users[0].op_type} "
                                    f"output channels are axis {want}")
            elif scale.size == 1 and w.ndim > 1 and w.shape[weight_axis(users[0].op_type, users[0]) if users else 0] > 1:
                problems.append(f"{node.name}: weights are per-tensor (per-channel expected)")
            continue
        # activation Q or DQ
        if dtype != want_act:
            problems.append(f"{node.name}: activations must be {prof.activation_dtype}, got "
                            f"{onnx.TensorProto.DataType.Name(dtype) if dtype else 'unknown'}")
        if scale.size != 1:
            problems.append(f"{node.name}: activation scale must be per tensor")
        if prof.symmetric_activations and zp is not None and np.any(zp != 0):
            problems.append(f"{node.name}: activation zero point must be 0 ({prof.name} is symmetric)")
        if node.op_type == "QuantizeLinear":
            outs = consumers.get(node.output[0], [])
            if not outs or any(c.op_type != "DequantizeLinear" for c in outs):
                problems.append(f"{node.name}: QuantizeLinear must feed DequantizeLinear only (Q/DQ pairs)")
    # Which tensors are quantized: only the inputs of quantized layers (and, where the profile wants
    # it, their outputs); never softmax or norms.
    def dequantized(t: str) -> bool:
        return t in producers and producers[t].op_type == "DequantizeLinear"

    def is_layer(n) -> bool:  # a weight layer whose weight is dequantized from a constant, or an
        # activation MatMul whose two inputs are both dequantized
        if n.op_type == "MatMul" and len(n.input) == 2 and not any(i in inits for i in n.input) \
                and all(dequantized(i) and producers[i].input[0] not in inits for i in n.input):
            return True
        return n.op_type in WEIGHT_OPS and any(
            dequantized(i) and producers[i].input[0] in inits for i in n.input[1:2])
    def stream_pair(q) -> bool:  # a residual-stream pair every reader shares (dmc.quantize.stream)
        src = producers.get(q.input[0])
        return (residual_stream and prof.allows_residual_stream and src is not None
                and src.op_type in STREAM_OPS and is_stream_pair(q, consumers))

    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or stream_pair(node):
            continue
        t = node.input[0]
        dqs = [d for d in consumers.get(node.output[0], []) if d.op_type == "DequantizeLinear"]
        feeds_layer = any(is_layer(c) and (c.input[0] == d.output[0] or (c.op_type == "MatMul" and d.output[0] in c.input))
                          for d in dqs for c in consumers.get(d.output[0], []))
        from_layer = t in producers and is_layer(producers[t])
        if not (feeds_layer or (prof.quantize_outputs and from_layer)):
            what = "output" if from_layer else "tensor"
            problems.append(f"{node.name}: quantizes {what} {t!r}, which is not "
                            f"{'an input or output' if prof.quantize_outputs else 'an input'} of a quantized layer")
    if prof.private_dq:
        for node in graph.node:
            if node.op_type != "DequantizeLinear" or node.input[0] in inits:
                continue
            q = producers.get(node.input[0])
            src = producers.get(q.input[0]) if q is not None else None
            if q is not None and stream_pair(q):
                continue
            if src is not None and is_layer(src) and not (src.op_type in ("Conv", "ConvTranspose", "Gemm")
                                                          and len(src.input) > 2 and src.input[2]):
                continue  # a bias-free quantized layer's output keeps one shared pair (see qdq.privatize_dq)
            shared = [c for c in consumers.get(node.output[0], []) if not is_layer(c)]
            if shared:
                problems.append(f"{node.name}: dequantized activation also feeds {shared[0].op_type} "
                                f"{shared[0].name!r} ({prof.name} wants private Q/DQ: float consumers read float)")
    for node in graph.node:  # an activation MatMul has both inputs quantized or neither
        if node.op_type == "MatMul" and not any(i in inits for i in node.input) and not is_layer(node):
            if any(dequantized(i) and producers[i].input[0] not in inits for i in node.input):
                problems.append(f"{node.name}: activation MatMul with one quantized input; quantize both or neither")
    if n_qdq == 0:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: the graph is not quantized")
    return problems
