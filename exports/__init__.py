"""Exports: per-stage ONNX graphs with parity checks, and their onnxruntime loader."""
