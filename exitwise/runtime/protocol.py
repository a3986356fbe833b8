"""The interface between the early-exit loop and the thing that runs the network.

:func:`exitwise.runtime.run_early_exit` (and the server's engine) drive a :class:`StageRunner`
one stage at a time and drop the rows of exited images between stages with
:func:`exitwise.models.select_rows`. Two implementations exist: PyTorch eager
(:class:`exitwise.runtime.TorchStageRunner`) and onnxruntime (``exports.runtime``), so the same
loop, batching and exit rule serve both.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..models.staged import State


@runtime_checkable
class StageRunner(Protocol):
    """Runs a network stage by stage on one device.

    The state is a list of batch-first tensors on :attr:`device`; logits come back on
    :attr:`device` as ``[N, num_classes]`` float tensors.
    """

    backend: str  # "torch" or "onnx"
    device: torch.device
    provider: str  # what actually runs the graphs: "torch-cpu", "CUDAExecutionProvider", ...
    num_exits: int

    def initial_state(self, images: Tensor) -> State:
        """``images``: normalised float32 ``[N, C, H, W]`` (on any device) -> stage 1's state."""
        ...

    def run_stage(self, index: int, state: State) -> tuple[State, Tensor]:
        """Run stage ``index`` (0-based): ``(state for the next stage, this exit's logits)``."""
        ...
