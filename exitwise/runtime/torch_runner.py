"""PyTorch eager as a stage runner: the bundle's stages on CPU or CUDA.

Eval mode and ``torch.inference_mode`` always. On CUDA the input can be converted to
channels_last (faster convolutions on tensor cores) and stages can run under bf16/fp16 autocast;
logits always come back as float32 so the exit rule sees the same dtype whatever the precision.
Reduced precision changes confidences slightly, so the served exits can drift from what
calibration (fp32) promised: it is off by default.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import Tensor

from ..bundle import Bundle
from ..models import EarlyExitNet, State

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchStageRunner:
    """A :class:`~exitwise.runtime.StageRunner` over an :class:`EarlyExitNet` in eager PyTorch."""

    backend = "torch"

    def __init__(
        self,
        model: EarlyExitNet,
        device: torch.device,
        precision: Precision = "fp32",
        channels_last: bool = False,
    ) -> None:
        if precision != "fp32" and device.type != "cuda":
            raise ValueError("reduced precision is only available on CUDA")
        self.model = model.to(device).eval()
        self.device = device
        self.num_exits = model.num_exits
        self.precision = precision
        self.channels_last = channels_last and device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        suffix = "" if precision == "fp32" else f"-{precision}"
        self.provider = f"torch-{device.type}{suffix}"

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def initial_state(self, images: Tensor) -> State:
        x = images.to(self.device, dtype=torch.float32, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model.initial_state(x)

    def run_stage(self, index: int, state: State) -> tuple[State, Tensor]:
        with torch.inference_mode(), self._autocast():
            new_state, logits = self.model.run_stage(index, state)
        return new_state, logits.float()


def load_torch_runner(
    bundle: Bundle, device: torch.device, precision: Precision = "fp32", channels_last: bool = True
) -> TorchStageRunner:
    """The bundle's model (weights verified by sha256) as a stage runner on ``device``."""
    model = bundle.load_model("cpu")
    return TorchStageRunner(model, device, precision, channels_last)
