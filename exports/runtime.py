"""The onnxruntime backend: a :class:`exitwise.runtime.StageRunner` over a bundle's stage graphs.

One ``InferenceSession`` per stage. The state between stages is a list of torch tensors on the
runner's device, so the engine drops exited rows with :func:`exitwise.models.select_rows`
exactly as with the PyTorch backend, and gets the logits as a torch tensor on that device.

- CPU: plain ``session.run`` on numpy views of the (CPU) tensors.
- CUDA: IOBinding. Inputs are bound to the torch tensors' device memory (``data_ptr``); outputs
  are torch tensors allocated for the batch size from the per-stage output shapes the manifest
  records, and bound the same way, so the state never leaves the GPU.

Loading refuses, each with one line: no ``onnx/`` in the bundle, graphs exported from other
weights, a stage file that is missing, truncated or replaced (sha256), a graph onnxruntime cannot
load or whose inputs/outputs differ from the manifest, and (``require_gpu``) running anywhere but
the CUDA provider.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from exitwise.bundle import Bundle
from exitwise.devices import resolve_device
from exitwise.fileio import sha256_bytes
from exitwise.models import State

from .errors import CorruptGraphError, ProviderError
from .manifest import OnnxManifest, StageGraph, TensorSpec, onnx_dir, read_onnx_manifest
from .sessions import (
    CPU,
    CUDA,
    active_provider,
    both_runtimes_installed,
    create_session,
    cuda_provider,
    cuda_provider_installed,
    import_onnxruntime,
)

log = logging.getLogger("exports.runtime")

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


class OnnxStageRunner:
    """Runs a bundle's ONNX stage graphs on one device (see the module docstring)."""

    backend = "onnx"

    def __init__(
        self,
        manifest: OnnxManifest,
        sessions: Sequence[Any],
        device: torch.device,
        provider: str,
        use_iobinding: bool,
    ) -> None:
        if len(sessions) != manifest.num_exits:
            raise ValueError("one session per stage")
        self.manifest = manifest
        self.sessions = list(sessions)
        self.device = device
        self.provider = provider
        self.use_iobinding = use_iobinding
        self.num_exits = manifest.num_exits
        self._output_names = [[o.name for o in s.outputs] for s in manifest.stages]

    @property
    def fp16(self) -> bool:
        return self.manifest.fp16

    def initial_state(self, images: Tensor) -> State:
        """``images``: normalised float32 ``[N, C, H, W]`` on any device -> stage 1's state."""
        spec = self.manifest.stages[0].inputs[0]
        if images.dim() != 4 or tuple(images.shape[1:]) != spec.feature_shape:
            raise ValueError(
                f"expected images of shape [N, {', '.join(map(str, spec.feature_shape))}], "
                f"got {list(images.shape)}"
            )
        return [images.to(device=self.device, dtype=_TORCH_DTYPES[spec.dtype]).contiguous()]

    def run_stage(self, index: int, state: State) -> tuple[State, Tensor]:
        """Run stage ``index`` (0-based): ``(state for the next stage, this exit's logits)``."""
        graph = self.manifest.stages[index]
        inputs = self._prepare(graph, state)
        n = inputs[0].shape[0]
        if n == 0:  # nothing left to run: keep the shapes, skip the session
            outs = [self._empty(spec, 0) for spec in graph.outputs]
        elif self.use_iobinding:
            outs = self._run_bound(index, graph, inputs, n)
        else:
            outs = self._run_plain(index, graph, inputs)
        return outs[:-1], outs[-1]

    # -- internals ------------------------------------------------------------------------------

    def _prepare(self, graph: StageGraph, state: State) -> list[Tensor]:
        if len(state) != len(graph.inputs):
            raise ValueError(
                f"stage {graph.exit} takes {len(graph.inputs)} state tensors, got {len(state)}"
            )
        out = []
        for t, spec in zip(state, graph.inputs, strict=True):
            if tuple(t.shape[1:]) != spec.feature_shape or t.shape[0] != state[0].shape[0]:
                raise ValueError(
                    f"stage {graph.exit}: {spec.name} should be [N, "
                    f"{', '.join(map(str, spec.feature_shape))}], got {list(t.shape)}"
                )
            # No copy when the tensor is already right (the usual case: our own outputs, or
            # select_rows of them, which is contiguous).
            out.append(
                t.detach().to(device=self.device, dtype=_TORCH_DTYPES[spec.dtype]).contiguous()
            )
        return out

    def _empty(self, spec: TensorSpec, n: int) -> Tensor:
        return torch.empty(
            (n, *spec.feature_shape), dtype=_TORCH_DTYPES[spec.dtype], device=self.device
        )

    def _run_plain(self, index: int, graph: StageGraph, inputs: list[Tensor]) -> list[Tensor]:
        feeds = {spec.name: t.cpu().numpy() for spec, t in zip(graph.inputs, inputs, strict=True)}
        results = self.sessions[index].run(self._output_names[index], feeds)
        return [torch.from_numpy(np.ascontiguousarray(r)).to(self.device) for r in results]

    def _run_bound(
        self, index: int, graph: StageGraph, inputs: list[Tensor], n: int
    ) -> list[Tensor]:
        device_type = "cuda" if self.device.type == "cuda" else "cpu"
        device_id = self.device.index or 0
        binding = self.sessions[index].io_binding()
        outputs = [self._empty(spec, n) for spec in graph.outputs]
        for bind, specs, tensors in (
            (binding.bind_input, graph.inputs, inputs),
            (binding.bind_output, graph.outputs, outputs),
        ):
            for spec, t in zip(specs, tensors, strict=True):
                # Bound by pointer: onnxruntime reads and writes the torch tensors in place.
                bind(
                    spec.name,
                    device_type,
                    device_id,
                    _NUMPY_DTYPES[spec.dtype],
                    list(t.shape),
                    t.data_ptr(),
                )
        if self.device.type == "cuda":
            # onnxruntime runs on its own CUDA stream: the torch kernels that produced the inputs
            # (e.g. select_rows) must have finished before it reads them.
            torch.cuda.current_stream(self.device).synchronize()
        self.sessions[index].run_with_iobinding(binding)
        binding.synchronize_outputs()  # outputs complete before torch reads them
        # `inputs` and `outputs` were referenced throughout the run, so the bound memory was
        # never freed under onnxruntime.
        return outputs


def read_stage_graph(bundle: Bundle, graph: StageGraph) -> bytes:
    """A stage file's bytes, checked against the manifest's sha256."""
    path = onnx_dir(bundle) / graph.file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptGraphError(
            f"{path}: stage file is missing; run `exitwise export {bundle.path}` again"
        ) from None
    except OSError as err:
        raise CorruptGraphError(f"{path}: cannot be read: {err.strerror}") from err
    if len(data) != graph.size_bytes or sha256_bytes(data) != graph.sha256:
        raise CorruptGraphError(
            f"{path}: sha256 does not match onnx/manifest.json (the graph is truncated, "
            f"corrupted or was replaced); run `exitwise export {bundle.path}` again"
        )
    return data


def _check_io(session: Any, graph: StageGraph, where: str) -> None:
    got_in = [(i.name, i.type) for i in session.get_inputs()]
    got_out = [(o.name, o.type) for o in session.get_outputs()]
    want_in = [(s.name, f"tensor({_ort_type(s)})") for s in graph.inputs]
    want_out = [(s.name, f"tensor({_ort_type(s)})") for s in graph.outputs]
    if got_in != want_in or got_out != want_out:
        raise CorruptGraphError(
            f"{where}: the graph's inputs/outputs differ from onnx/manifest.json"
        )


def _ort_type(spec: TensorSpec) -> str:
    return "float" if spec.dtype == "float32" else "float16"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _open_sessions(
    bundle: Bundle,
    manifest: OnnxManifest,
    providers: list[Any],
    intra_op_threads: int | None,
) -> list[Any] | None:
    """One session per stage; ``None`` when CUDA was asked for and onnxruntime did not start it
    (it either falls back to the CPU silently or raises, depending on what is missing)."""
    wants_cuda = any(isinstance(p, tuple) and p[0] == CUDA for p in providers)
    sessions = []
    for graph in manifest.stages:
        data = read_stage_graph(bundle, graph)
        where = str(onnx_dir(bundle) / graph.file)
        try:
            session = create_session(data, providers, intra_op_threads)
        except Exception as err:  # onnxruntime raises its own exception types
            if not wants_cuda:
                raise CorruptGraphError(
                    f"{where}: onnxruntime cannot load the graph: {_first_line(err)}"
                ) from err
            # The graph or the CUDA provider? The graph is fine if the CPU loads it.
            _open_sessions(bundle, manifest, [CPU], intra_op_threads)
            return None
        if wants_cuda and active_provider(session) != CUDA:
            return None
        _check_io(session, graph, where)
        sessions.append(session)
    return sessions


def load_onnx_runner(
    bundle: Bundle,
    device: str = "auto",
    require_gpu: bool = False,
    *,
    use_iobinding: bool | None = None,
    intra_op_threads: int | None = None,
) -> OnnxStageRunner:
    """The onnxruntime :class:`~exitwise.runtime.StageRunner` for ``bundle``'s ``onnx/``.

    ``device``: "auto" (CUDA when a GPU is present, else CPU), "cpu", "cuda" or "cuda:N".
    ``require_gpu``: refuse to start unless the CUDA provider really runs the graphs.
    ``use_iobinding``: default on for CUDA, off for CPU (where it also works, and is tested).
    """
    manifest = read_onnx_manifest(bundle)
    ort = import_onnxruntime()
    if both_runtimes_installed():
        log.warning(
            "both onnxruntime and onnxruntime-gpu are installed and overwrite each other; "
            "uninstall both and install one (pip install 'exitwise[onnx]' picks the right one)"
        )
    wanted = resolve_device(device, require_gpu=require_gpu)
    if wanted.type == "cuda" and not cuda_provider_installed():
        message = (
            f"onnxruntime {ort.__version__} has no CUDA provider (the CPU-only `onnxruntime` "
            "package is installed; install `onnxruntime-gpu` instead, never both)"
        )
        if require_gpu or device != "auto":
            raise ProviderError(message)
        log.warning("%s; running on CPU", message)
        wanted = torch.device("cpu")
    sessions = None
    if wanted.type == "cuda":
        sessions = _open_sessions(
            bundle, manifest, [cuda_provider(wanted.index or 0), CPU], intra_op_threads
        )
        if sessions is None:
            message = (
                "onnxruntime could not start its CUDA provider on this GPU (CUDA or cuDNN "
                "libraries missing or of the wrong version for this onnxruntime-gpu)"
            )
            if require_gpu:
                raise ProviderError(f"--require-gpu: {message}")
            log.warning("%s; running on CPU", message)
            wanted = torch.device("cpu")
    if sessions is None:
        sessions = _open_sessions(bundle, manifest, [CPU], intra_op_threads)
        assert sessions is not None  # only a CUDA attempt comes back empty
    provider = active_provider(sessions[0])
    runner = OnnxStageRunner(
        manifest,
        sessions,
        wanted,
        provider,
        use_iobinding=wanted.type == "cuda" if use_iobinding is None else use_iobinding,
    )
    log.info(
        "onnx backend: %d stage graphs (%s%s, opset %d) on %s via %s",
        manifest.num_exits,
        "fp16" if manifest.fp16 else "fp32",
        ", IOBinding" if runner.use_iobinding else "",
        manifest.opset,
        wanted,
        provider,
    )
    return runner
