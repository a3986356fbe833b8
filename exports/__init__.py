"""Exports: per-stage ONNX graphs with parity checks, and their onnxruntime loader.

- :func:`export_bundle` (``exitwise export``): one graph per stage into ``bundle/onnx/``, checked
  against PyTorch on held-out images before anything is written.
- :func:`load_onnx_runner`: the onnxruntime :class:`~exitwise.runtime.StageRunner` the server's
  ``--backend onnx`` uses.

Importing this package loads neither onnx nor onnxruntime; they are imported when used.
"""

from .errors import (
    CorruptGraphError,
    ExportError,
    ExportMismatchError,
    MissingExportError,
    OnnxBundleError,
    OnnxUnavailableError,
    ParityError,
    ProviderError,
)
from .export import export_bundle
from .manifest import OnnxManifest, read_onnx_manifest
from .runtime import OnnxStageRunner, load_onnx_runner

__all__ = [
    "CorruptGraphError",
    "ExportError",
    "ExportMismatchError",
    "MissingExportError",
    "OnnxBundleError",
    "OnnxManifest",
    "OnnxStageRunner",
    "OnnxUnavailableError",
    "ParityError",
    "ProviderError",
    "export_bundle",
    "load_onnx_runner",
    "read_onnx_manifest",
]
