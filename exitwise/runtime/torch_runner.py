"""PyTorch eager as a stage runner: the bundle's stages on CPU or CUDA.

Eval mode and ``torch.inference_mode`` always. On CUDA the input can be converted to
channels_last (faster convolutions on tensor cores) and stages can run under bf16/fp16 autocast;
logits always come back as float32 so the exit rule sees the same dtype whatever the precision.
Reduced precision changes confidences slightly, so the served exits can drift from what
calibration (fp32) promised: it is off by default.
"""

from __future__ import annotations

import contextlib
import warnings
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
        self._graphs: list[torch.jit.ScriptModule] | None = None

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
            if self._graphs is not None:
                new, logits = self._graphs[index](*state)
                return list(new), logits
            new_state, logits = self.model.run_stage(index, state)
        return new_state, logits.float()

    def trace(self, input_shape: tuple[int, ...]) -> bool:
        """Replace each stage's Python module calls by a TorchScript graph of the same
        operations (``torch.jit.trace``): a stage at a small batch is mostly Python dispatch on
        a CPU, and the graph dispatches its operations without it. Kept only when, on random
        inputs at three batch sizes, every stage's outputs are bit for bit the eager ones
        (calibration ran the eager model); fp32 only. Returns whether it was kept."""
        if self.precision != "fp32":
            return False
        graphs = []
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it fixes
            state = self.initial_state(torch.randn(2, *input_shape))
            for index in range(self.num_exits):
                stage = _Stage(self.model, index)
                graphs.append(torch.jit.trace(stage, tuple(state), check_trace=False))
                state, _ = self.model.run_stage(index, state)
            for batch in (1, 3, 8):
                state = self.initial_state(torch.randn(batch, *input_shape))
                for index, graph in enumerate(graphs):
                    new, logits = graph(*state)
                    state, want = self.model.run_stage(index, state)
                    if len(new) != len(state) or not torch.equal(logits, want):
                        return False
                    if not all(torch.equal(a, b) for a, b in zip(new, state, strict=True)):
                        return False
        self._graphs = graphs
        self.provider += "-script"
        return True


class _Stage(torch.nn.Module):
    """One stage with tensors in and out, as ``torch.jit.trace`` takes them."""

    def __init__(self, model: EarlyExitNet, index: int) -> None:
        super().__init__()
        self.model, self.index = model, index

    def forward(self, *state: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        new, logits = self.model.run_stage(self.index, list(state))
        return tuple(new), logits


def load_torch_runner(
    bundle: Bundle, device: torch.device, precision: Precision = "fp32", channels_last: bool = True
) -> TorchStageRunner:
    """The bundle's model (weights verified by sha256) as a stage runner on ``device``."""
    model = bundle.load_model("cpu")
    return TorchStageRunner(model, device, precision, channels_last)
