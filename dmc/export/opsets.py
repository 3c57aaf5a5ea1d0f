"""ONNX opsets the exporter is tested with (notes/environment.md): no torch import, the CLI reads it."""

from dmc.errors import DmcError

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = (17, 18, 20)


def check_opset(opset: int) -> int:
    if opset not in SUPPORTED_OPSETS:
        raise DmcError(f"opset {opset} is not supported (supported: {', '.join(map(str, SUPPORTED_OPSETS))})")
    return opset
