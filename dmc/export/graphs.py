"""Write several ONNX graphs that share one weights file.

Graph variants of one artifact (full, cached-step partial graphs, per-step-group scale
variants) mostly hold the same tensors. Every initializer above a small size is stored
once in ``weights.bin``, found by content hash, and each graph points into it with
ONNX external data (location, offset, length). Variants then cost graph bytes, not
weight bytes. Tensors go to the file one at a time before any graph is serialized
(``dmc.export.external``), so graphs of any size can be written.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from dmc.export.external import ALIGN, INLINE_BELOW, WeightsWriter, save_model, serialize  # noqa: F401 (re-exported)

WEIGHTS_FILE = "weights.bin"


def write_graphs(graphs: dict[str, onnx.ModelProto], folder: Path, release: bool = False) -> dict[str, Path]:
    """Save each graph as ``folder/<name>.onnx`` with large tensors deduplicated in ``weights.bin``.

    The graphs are left as they were, unless ``release``: then they keep only references into the
    written weights file (use it when nothing reads weights any more, and swap each graph for
    ``compact(graph)``: only that gives the bytes back).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    with WeightsWriter(folder / WEIGHTS_FILE) as weights:
        for name, model in graphs.items():
            for tensor in model.graph.initializer:
                if tensor.data_location == onnx.TensorProto.EXTERNAL and not release:
                    raise ValueError(f"{name}: initializer {tensor.name} is already external; load it first")
            paths[name] = save_model(model, folder / f"{name}.onnx", weights, release=release)
    return paths


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """A fresh copy of a released graph (weights external), so the original can be dropped.

    Python protobuf (upb) keeps a message tree's memory in one arena until the whole tree is
    gone: clearing the tensors' bytes frees nothing, and a released SD 1.5 graph still held its
    3.4 GB of weights through verification. The copy is small, since only references remain.
    """
    return onnx.ModelProto.FromString(serialize(model))  # refuses, with a clear message, a graph still holding its weights
