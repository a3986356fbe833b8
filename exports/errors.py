"""What can go wrong with an ONNX export, each with a message a user can act on.

Every class is an :class:`~exitwise.errors.ExitwiseError`, so the CLI prints it as one line and
exits non-zero, and the server refuses to start with that line. Problems with an export that
sits in a bundle are also :class:`~exitwise.errors.BundleError`.
"""

from __future__ import annotations

from exitwise.errors import BundleError, CalibrationMismatchError, ExitwiseError


class OnnxUnavailableError(ExitwiseError):
    """onnx / onnxscript / onnxruntime is not installed."""


class ExportError(ExitwiseError):
    """A stage could not be exported, or the exported graph is not what was asked for."""


class ParityError(ExportError):
    """The exported graphs do not compute what the PyTorch model computes (nothing is written)."""


class OnnxBundleError(BundleError):
    """A bundle's ``onnx/`` directory that cannot be served: missing, incomplete or corrupted."""


class MissingExportError(OnnxBundleError):
    """The bundle has no ``onnx/`` directory (or no manifest in it)."""


class ExportMismatchError(OnnxBundleError, CalibrationMismatchError):
    """Graphs exported from other weights than the bundle's (or for another model)."""


class CorruptGraphError(OnnxBundleError):
    """A stage file that is missing, truncated, replaced, or that onnxruntime cannot load."""


class ProviderError(ExitwiseError):
    """The execution provider asked for is not what runs (e.g. ``require_gpu`` on CPU fallback)."""
