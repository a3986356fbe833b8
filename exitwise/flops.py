"""Per-exit cost: multiply-adds and parameters, cumulative over the stages up to each exit.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` on one image, stage by stage, and halved
(the counter reports a multiply-add as 2 FLOPs; the papers' "MUL-ADD" counts it once). The counter
sees convolutions and matrix products only: unlike the seed's counter, it does not add ReLU,
pooling or interpolation elements, so our figures sit slightly (under 1.5 %) below the published
ones. Exit k is charged everything computed before it, earlier classifiers included ("without
lazy evaluation"), which is also what an image that leaves at exit k really costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models.staged import EarlyExitNet


@dataclass(frozen=True)
class ExitCost:
    exit: int  # 1-based
    mflops: float  # cumulative multiply-adds, millions
    params_m: float  # cumulative parameters, millions


def stage_params(model: EarlyExitNet) -> list[int]:
    return [sum(p.numel() for p in stage.parameters()) for stage in model.stages]


@torch.no_grad()
def stage_macs(model: EarlyExitNet, input_size: int, in_channels: int) -> list[int]:
    """Multiply-adds of each stage (not cumulative) for one ``in_channels x size x size`` image."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        state = model.initial_state(
            torch.zeros(1, in_channels, input_size, input_size, device=device)
        )
        macs: list[int] = []
        for index in range(model.num_exits):
            counter = FlopCounterMode(display=False)
            with counter:
                state, _ = model.run_stage(index, state)
            macs.append(counter.get_total_flops() // 2)
        return macs
    finally:
        model.train(was_training)


def exit_costs(model: EarlyExitNet, input_size: int, in_channels: int) -> list[ExitCost]:
    """Cumulative MFLOPs (multiply-adds) and M parameters at each exit."""
    costs: list[ExitCost] = []
    macs_total = params_total = 0
    for k, (macs, params) in enumerate(
        zip(stage_macs(model, input_size, in_channels), stage_params(model), strict=True)
    ):
        macs_total += macs
        params_total += params
        costs.append(ExitCost(exit=k + 1, mflops=macs_total / 1e6, params_m=params_total / 1e6))
    return costs
