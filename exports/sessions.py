"""onnxruntime access: the import, the providers, and quiet session creation.

onnxruntime-gpu and plain onnxruntime share the import name ``onnxruntime``; both work here (the
first adds the CUDA provider). The CUDA provider is asked for only when a GPU is really present
(``torch.cuda.is_available()``), because asking for it on a machine without one makes
onnxruntime print several lines of library-loading errors before it falls back to the CPU. When
a GPU is present but onnxruntime cannot start CUDA on it (missing CUDA/cuDNN libraries),
onnxruntime's own messages are muted and the caller logs one clear line instead. The CUDA and
cuDNN libraries onnxruntime-gpu needs are the ones ``import torch`` has already loaded (from the
nvidia-* wheels a CUDA build of torch brings), as onnxruntime's documentation recommends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import torch

from .errors import OnnxUnavailableError

log = logging.getLogger("exports")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# onnxruntime's logger severities: 0 verbose, 1 info, 2 warning (its default), 3 error, 4 fatal.
_ORT_WARNING, _ORT_ERROR, _ORT_FATAL = 2, 3, 4


def import_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as err:
        raise OnnxUnavailableError(
            "onnxruntime is not installed; install the `onnx` extra: pip install 'exitwise[onnx]'"
        ) from err
    module: ModuleType = onnxruntime
    return module


def import_onnx() -> ModuleType:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as err:
        raise OnnxUnavailableError(
            "onnx and onnxscript are needed to export; install the `onnx` extra: "
            "pip install 'exitwise[onnx]'"
        ) from err
    return onnx


def both_runtimes_installed() -> bool:
    """``onnxruntime`` and ``onnxruntime-gpu`` in one environment: they overwrite each other's
    files, and which one answers the import is an accident of install order."""
    from importlib import metadata

    found = 0
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
            found += 1
        except metadata.PackageNotFoundError:
            pass
    return found == 2


def ort_version() -> str:
    return str(import_onnxruntime().__version__)


def cuda_provider_installed() -> bool:
    return CUDA in import_onnxruntime().get_available_providers()


def gpu_available() -> bool:
    """A CUDA GPU that torch can see and an onnxruntime build that can use it."""
    return torch.cuda.is_available() and cuda_provider_installed()


@contextlib.contextmanager
def _muted_default_logger() -> Iterator[None]:
    # The provider-loading errors go to onnxruntime's process-wide default logger, not to the
    # session's; mute it while CUDA is tried, then restore onnxruntime's default (warnings).
    ort = import_onnxruntime()
    ort.set_default_logger_severity(_ORT_FATAL)
    try:
        yield
    finally:
        ort.set_default_logger_severity(_ORT_WARNING)


def session_options(intra_op_threads: int | None = None) -> Any:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_ERROR  # not the "nodes not assigned to CUDA" warnings
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    return options


def cuda_provider(device_index: int) -> tuple[str, dict[str, str]]:
    # HEURISTIC: with a dynamic batch axis every stage sees many batch sizes (rows are dropped
    # between stages); an exhaustive cuDNN search per new shape would stall the first requests.
    return (CUDA, {"device_id": str(device_index), "cudnn_conv_algo_search": "HEURISTIC"})


def create_session(
    graph: bytes,
    providers: Sequence[str | tuple[str, dict[str, str]]],
    intra_op_threads: int | None = None,
) -> Any:
    """An ``InferenceSession`` for ``graph`` (serialized ONNX) on ``providers``, in order.

    Raises whatever onnxruntime raises for a graph it cannot load; callers turn that into
    their own message.
    """
    ort = import_onnxruntime()
    wants_cuda = any((p[0] if isinstance(p, tuple) else p) == CUDA for p in providers)
    options = session_options(intra_op_threads)
    if not wants_cuda:
        return ort.InferenceSession(graph, sess_options=options, providers=list(providers))
    with _muted_default_logger():
        return ort.InferenceSession(graph, sess_options=options, providers=list(providers))


def active_provider(session: Any) -> str:
    """The provider that runs the session's graph (the first one onnxruntime kept)."""
    providers: list[str] = session.get_providers()
    return providers[0] if providers else CPU
