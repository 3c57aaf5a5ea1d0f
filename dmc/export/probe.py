"""An ONNX Runtime session that also returns chosen intermediate tensors (for calibration and fits)."""

from __future__ import annotations

import onnx


def session_with_outputs(model: onnx.ModelProto, tensors: list[str], optimization_level=None, folder=None,
                         mem_pattern: bool = True):
    """CPU session of ``model`` whose graph outputs include every name in ``tensors``.

    The outputs are added to ``model`` only while the session is built, then removed again: no
    copy of the graph (which for a full-size UNet would be gigabytes of weights). ``folder``: where
    the graph's external data lives, for a graph held as structure only. ``mem_pattern``: ONNX
    Runtime's memory pattern (off for full-size graphs: it plans one block per input shape)."""
    import onnxruntime as ort

    from dmc.export.external import inference_session

    existing = {o.name for o in model.graph.output}
    added = 0
    for t in tensors:
        if t not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
            existing.add(t)
            added += 1
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = mem_pattern
    if optimization_level is not None:
        options.graph_optimization_level = optimization_level
    try:
        return inference_session(model, options, folder=folder)
    finally:
        for _ in range(added):
            model.graph.output.pop()
