"""Write several ONNX graphs that share one weights file.

Graph variants of one artifact (full, cached-step partial graphs, per-step-group scale
variants) mostly hold the same tensors. Every initializer above a small size is stored
once in ``weights.bin``, found by content hash, and each graph points into it with
ONNX external data (location, offset, length). Variants then cost graph bytes, not
weight bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data

WEIGHTS_FILE = "weights.bin"
INLINE_BELOW = 1024  # bytes: small constants stay inside the graph
ALIGN = 64


def _initializers(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:  # subgraphs (If/Loop) are rare in our exports; cover them anyway
        for attr in node.attribute:
            if attr.g is not None:
                yield from attr.g.initializer


def write_graphs(graphs: dict[str, onnx.ModelProto], folder: Path) -> dict[str, Path]:
    """Save each graph as ``folder/<name>.onnx`` with large tensors deduplicated in ``weights.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets: dict[str, tuple[int, int]] = {}
    paths = {}
    with open(folder / WEIGHTS_FILE, "wb") as blob:
        for name, model in graphs.items():
            model = onnx.ModelProto.FromString(model.SerializeToString())  # never mutate the caller's graph
            for tensor in _initializers(model):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    raise ValueError(f"{name}: initializer {tensor.name} is already external; load it first")
                raw = tensor.raw_data or onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor)).raw_data
                if len(raw) < INLINE_BELOW:
                    continue
                key = hashlib.sha256(raw).hexdigest()
                if key not in offsets:
                    pad = (-blob.tell()) % ALIGN
                    blob.write(b"\0" * pad)
                    offsets[key] = (blob.tell(), len(raw))
                    blob.write(raw)
                offset, length = offsets[key]
                tensor.raw_data = raw
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(field)
                set_external_data(tensor, WEIGHTS_FILE, offset=offset, length=length)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            paths[name] = folder / f"{name}.onnx"
            paths[name].write_bytes(model.SerializeToString())
    return paths
