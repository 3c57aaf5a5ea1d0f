"""ONNX export of adapters and the shared-weights graph writer (TensorRT engines come later)."""
