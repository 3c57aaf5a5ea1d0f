"""An ONNX Runtime session that also returns chosen intermediate tensors (for calibration and fits)."""

from __future__ import annotations

import onnx


def session_with_outputs(model: onnx.ModelProto, tensors: list[str], optimization_level=None):
    """CPU session of a copy of ``model`` whose graph outputs include every name in ``tensors``."""
    import onnxruntime as ort

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    for t in tensors:
        if t not in existing:
            aug.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimization_level is not None:
        options.graph_optimization_level = optimization_level
    return ort.InferenceSession(aug.SerializeToString(), options, providers=["CPUExecutionProvider"])
