"""ONNX graphs of any size: weights always leave the protobuf before it is serialized.

Protobuf cannot serialize a message over 2 GB, and a full-size Stable Diffusion UNet holds 3.4 GB
of FP32 weights. dmc therefore keeps graphs in memory as ordinary ``onnx.ModelProto`` objects
(protobuf itself has no size limit in memory; ``CopyFrom`` needs no serialization) and serializes
them only through this module, which first moves every initializer of ``INLINE_BELOW`` bytes or
more into an external-data file, one tensor at a time. The serialized graph then holds only
structure and small constants; ``serialize`` refuses anything above ``MAX_PROTO_BYTES`` (env
``DMC_MAX_PROTO_BYTES``; tests lower it to prove no path serializes weights inline).

For other exporters (text encoders, VAEs), the one-call entry point is::

    export_to_external_data(module, example_inputs, input_names, output_names,
                            folder, weights_file="weights.bin", name="text_encoder")

which exports with torch's dynamo exporter and writes ``folder/<name>.onnx`` whose large tensors
live in ``folder/<weights_file>``, deduplicated by content hash. Pass one ``WeightsWriter`` as
``weights=`` to several calls (or to ``write_graphs``) to share one weights file between graphs.

Other helpers: ``save_model`` (non-mutating save with external data), ``load_model``,
``copy_model`` (deep copy without serializing), ``skeleton`` (structure-only copy for shape
inference), ``inference_session`` (an ONNX Runtime session from an in-memory graph of any size).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import onnx
from onnx import numpy_helper

from dmc.errors import DmcError

INLINE_BELOW = 1024  # bytes: small constants stay inside the graph
ALIGN = 64
# Largest graph protobuf dmc serializes (protobuf's hard limit is 2 GiB - 1).
MAX_PROTO_BYTES = int(os.environ.get("DMC_MAX_PROTO_BYTES", str((1 << 31) - (1 << 20))))


def _initializers(model: onnx.ModelProto):
    def walk(graph):
        yield from graph.initializer
        for node in graph.node:  # subgraphs (If/Loop) are rare in our exports; cover them anyway
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)
                for g in attr.graphs:
                    yield from walk(g)
    yield from walk(model.graph)


def _movable(tensor: onnx.TensorProto) -> bool:
    return (tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.data_type != onnx.TensorProto.STRING
            and tensor.ByteSize() >= INLINE_BELOW)


def tensor_bytes(model: onnx.ModelProto) -> int:
    """An upper bound of the bytes the graph would serialize to, counted field by field: upb's
    ``ByteSize`` serializes the message, so on a whole graph above 2 GB it fails (SD 1.5 ``--int8``)
    where each initializer and node works. The main graph is opened one level; every other
    message is sized whole."""
    return _fields_bytes(model, open_graph=True)


def _fields_bytes(message, open_graph: bool = False) -> int:
    total = 0
    for field, value in message.ListFields():
        for item in (value if field.is_repeated else [value]):
            if field.type == field.TYPE_MESSAGE:
                size = (_fields_bytes(item) if open_graph and field.name == "graph" else item.ByteSize())
            elif isinstance(item, str):
                size = len(item.encode())
            elif isinstance(item, bytes):
                size = len(item)
            else:
                size = 0
            total += size + 11  # tag and length (or the scalar itself): at most 11 bytes
    return total


def needs_external(model: onnx.ModelProto) -> bool:
    """True when ``model`` cannot be handed to a tool as one protobuf (bytes or a single file)."""
    return tensor_bytes(model) > MAX_PROTO_BYTES


def serialize(model: onnx.ModelProto) -> bytes:
    """``model.SerializeToString()``, refused above ``MAX_PROTO_BYTES`` with a clear message."""
    size = tensor_bytes(model)
    if size > MAX_PROTO_BYTES:
        raise DmcError(f"internal error: refusing to serialize a {size / 1e6:.0f} MB ONNX protobuf "
                       f"(limit {MAX_PROTO_BYTES / 1e6:.0f} MB); its weights must go to external data")
    return model.SerializeToString()


class WeightsWriter:
    """Appends tensor bytes to one file, each distinct content once (sha256), 64-byte aligned.
    Opening truncates the file: share one writer between graphs rather than reopening it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._offsets: dict[str, tuple[int, int]] = {}

    def put(self, raw: bytes) -> tuple[int, int]:
        key = hashlib.sha256(raw).hexdigest()
        if key not in self._offsets:
            self._file.write(b"\0" * ((-self._file.tell()) % ALIGN))
            self._offsets[key] = (self._file.tell(), len(raw))
            self._file.write(raw)
        return self._offsets[key]

    @property
    def unique_tensors(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "WeightsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_raw(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    # typed fields (float_data, ...): normalise to raw_data, the same tensor value
    raw = numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(f)
    return raw


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    tensor.data_location = onnx.TensorProto.EXTERNAL


@contextmanager
def _weights_out(model: onnx.ModelProto, weights: WeightsWriter, location: str, keep_out: bool = False):
    """Within the block, every large initializer of ``model`` points into ``weights``; afterwards
    the tensor bytes are back in place (the caller's graph is not changed) unless ``keep_out``.
    With ``keep_out`` no copy of the bytes is kept (reading ``raw_data`` copies it: keeping them all
    held a second 3.4 GB for SD 1.5), so a failure midway leaves the graph pointing at the file."""
    moved = []
    try:
        for tensor in _initializers(model):
            if not _movable(tensor):
                continue
            raw = _to_raw(tensor)
            offset, length = weights.put(raw)
            _point_at(tensor, location, offset, length)
            moved.append((tensor, None if keep_out else raw))
        yield
    finally:
        for tensor, raw in ([] if keep_out else moved):
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = raw


def save_model(model: onnx.ModelProto, path: str | Path, weights: WeightsWriter, release: bool = False) -> Path:
    """Write ``model`` to ``path`` with its large tensors in ``weights`` (which must sit in the same
    folder). ``release=True`` leaves the in-memory graph pointing at the written file instead of
    holding the bytes (for graphs nobody reads weights from any more)."""
    path = Path(path)
    if weights.path.parent.resolve() != path.parent.resolve():
        raise ValueError("the weights file must sit next to the graph (ONNX external data is relative)")
    with _weights_out(model, weights, weights.path.name, keep_out=release):
        weights._file.flush()
        path.write_bytes(serialize(model))
    return path


def load_model(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=load_weights)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Deep copy (protobuf ``CopyFrom``: no serialization, so any size works)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the data of large tensors dropped (dims and types kept): enough for shape
    inference and graph rewrites that only read structure."""
    out = onnx.ModelProto()
    out.ir_version, out.producer_name = model.ir_version, model.producer_name
    out.opset_import.extend(model.opset_import)
    out.graph.name = model.graph.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(out.graph, field).extend(getattr(model.graph, field))
    for tensor in model.graph.initializer:
        t = out.graph.initializer.add()
        if _movable(tensor):
            t.name, t.data_type = tensor.name, tensor.data_type
            t.dims.extend(tensor.dims)
            _point_at(t, "_dropped_", 0, 0)
        else:
            t.CopyFrom(tensor)
    return out


def save_for_tool(model: onnx.ModelProto, folder: str | Path, name: str = "model") -> Path:
    """``folder/<name>.onnx`` for tools that read ONNX files: one file while the graph fits in one
    protobuf, else with its large tensors in ``<name>.onnx.data``."""
    path = Path(folder) / f"{name}.onnx"
    if not needs_external(model):
        path.write_bytes(serialize(model))
        return path
    with WeightsWriter(path.with_name(f"{name}.onnx.data")) as w:
        save_model(model, path, w)
    return path


def inference_session(model: onnx.ModelProto, options=None, providers=("CPUExecutionProvider",), folder=None):
    """An ONNX Runtime session of an in-memory graph of any size (through a temporary folder with
    external data when the graph is too large to pass as bytes). ``folder``: the graph's tensors
    point at external data there (a structure-only graph); the session opens it from that folder."""
    import onnxruntime as ort

    if folder is not None:
        path = Path(folder) / "session.onnx"
        path.write_bytes(serialize(model))
        try:
            return ort.InferenceSession(str(path), options, providers=list(providers))
        finally:
            path.unlink()
    if not needs_external(model):
        return ort.InferenceSession(serialize(model), options, providers=list(providers))
    with tempfile.TemporaryDirectory(prefix="dmc-ort-") as tmp:
        return ort.InferenceSession(str(save_for_tool(model, tmp)), options, providers=list(providers))


def export_to_external_data(module, example_inputs: tuple, input_names: list[str], output_names: list[str],
                            folder: str | Path, weights_file: str = "weights.bin", name: str = "model",
                            weights: WeightsWriter | None = None, opset: int | None = None,
                            static_inputs: tuple[str, ...] = ()) -> Path:
    """Export ``module`` (dynamic batch on dim 0 of every input not in ``static_inputs``) and write
    ``folder/<name>.onnx`` with its large tensors in ``folder/<weights_file>`` (or in ``weights``,
    a shared writer in ``folder``). Returns the graph path."""
    from dmc.export.onnx_export import DEFAULT_OPSET, export_onnx

    model = export_onnx(module, example_inputs, input_names, output_names, opset or DEFAULT_OPSET, static_inputs)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights is not None:
        return save_model(model, folder / f"{name}.onnx", weights, release=True)
    with WeightsWriter(folder / weights_file) as w:
        return save_model(model, folder / f"{name}.onnx", w, release=True)
