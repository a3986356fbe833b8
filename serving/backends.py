"""Backend selection: the stage runner the engine drives, PyTorch (``exitwise.runtime``) or
onnxruntime (``exports``' loader).

:func:`load_runner` picks the backend and device from the settings and turns every reason it
cannot start (no GPU when one is required, onnxruntime missing, a bundle without ONNX graphs)
into a :class:`~serving.errors.ServerConfigError` with one readable line.
"""

from __future__ import annotations

import logging

import torch

from exitwise.bundle import Bundle
from exitwise.devices import resolve_device
from exitwise.errors import ExitwiseError
from exitwise.runtime import StageRunner, load_torch_runner

from .errors import ServerConfigError
from .settings import Settings

log = logging.getLogger("exitwise.serving")


def load_runner(bundle: Bundle, settings: Settings) -> StageRunner:
    device = resolve_device(settings.device, require_gpu=settings.require_gpu)
    if settings.backend == "torch":
        if settings.precision != "fp32" and device.type != "cuda":
            raise ServerConfigError(f"precision {settings.precision} needs a CUDA device")
        torch_runner = load_torch_runner(bundle, device, settings.precision, settings.channels_last)
        if settings.torch_script:
            p = bundle.manifest.preprocessing
            if not torch_runner.trace((p.channels, p.input_size, p.input_size)):
                log.warning("torch_script: the traced stages differ from eager ones; eager it is")
        runner: StageRunner = torch_runner
    else:
        runner = _load_onnx(bundle, device, settings.require_gpu)
    if runner.num_exits != bundle.manifest.num_exits:
        raise ServerConfigError(
            f"the {settings.backend} runner has {runner.num_exits} stages but the bundle "
            f"describes {bundle.manifest.num_exits} exits"
        )
    log.info(
        "backend %s on %s (provider %s), %d exits",
        runner.backend,
        runner.device,
        runner.provider,
        runner.num_exits,
    )
    return runner


def _load_onnx(bundle: Bundle, device: torch.device, require_gpu: bool) -> StageRunner:
    try:
        from exports.runtime import load_onnx_runner
    except ImportError as err:
        raise ServerConfigError(
            f"the onnx backend is unavailable ({err}); install exitwise[onnx] or use "
            "--backend torch"
        ) from err
    try:
        runner: StageRunner = load_onnx_runner(bundle, device.type, require_gpu)
    except ExitwiseError as err:
        raise ServerConfigError(f"the onnx backend cannot serve this bundle: {err}") from err
    return runner
