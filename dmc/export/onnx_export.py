"""Export a torch module to ONNX with torch's dynamo exporter and a dynamic batch."""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stdout

import onnx
import torch

from dmc.errors import DmcError
from dmc.export.opsets import DEFAULT_OPSET, check_opset  # noqa: F401 (re-exported)

MAX_TRACE_BATCH = 63


def export_onnx(module: torch.nn.Module, example_inputs: tuple, input_names: list[str],
                output_names: list[str], opset: int = DEFAULT_OPSET,
                static_inputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Trace ``module`` on ``example_inputs``; every input's dim 0 is the shared dynamic batch,
    except inputs named in ``static_inputs`` (per-call constants such as correction tables),
    whose shapes are fixed."""
    module.eval()  # the legacy exporter restores train mode; never export a dropout-active graph
    # max 63: diffusers' Upsample2D branches on ``batch >= 64`` (a .contiguous() workaround), and a
    # range across it makes torch.export fail and torch.onnx fall back to slower strategies that took
    # 17+ GB on SD 1.5. The ONNX batch dim stays symbolic, so any batch runs in ONNX Runtime.
    batch = torch.export.Dim("batch", min=1, max=MAX_TRACE_BATCH)
    # Positional, so graph input names need not be Python identifiers (e.g. "cache.deep").
    dynamic = tuple(None if name in static_inputs else {0: batch} for name in input_names)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" noise
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, example_inputs, input_names=input_names, output_names=output_names,
                dynamic_shapes=dynamic, dynamo=True, opset_version=opset, verbose=False,
            )
            program.optimize()
    except Exception as e:
        raise DmcError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    # An in-memory protobuf may exceed 2 GB; only dmc.export.external serializes it (weights moved out).
    model = program.model_proto
    del program  # the exporter's IR graph and its tensor views
    model.producer_name = "dmc"
    return model
