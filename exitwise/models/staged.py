"""The staged early-exit interface every architecture implements.

A network with K exits is K stages. Stage k (0-based here, exit k+1 for users) maps the state left
by stage k-1 to ``(new_state, logits_k)``. The state is a flat list of tensors that are all
batch-first, so an engine can drop the rows of images that already exited before running the
next stage (:func:`select_rows`). Stage 0 receives ``[images]``.

``forward(x)`` runs all stages and returns the K logits; by construction it is the same
computation as running the stages one after another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

State = list[Tensor]


class Stage(nn.Module):
    """One stage: the blocks between exit k-1 and exit k, plus the classifier of exit k."""

    def forward(self, state: State) -> tuple[State, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class EarlyExitNet(nn.Module):
    """Base class: subclasses fill ``self.stages`` and set ``arch`` and ``config``."""

    arch: str = ""
    stages: nn.ModuleList

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList()

    @property
    def num_exits(self) -> int:
        return len(self.stages)

    @property
    def config_dict(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture with ``create_model(arch, **kw)``."""
        raise NotImplementedError

    def initial_state(self, x: Tensor) -> State:
        return [x]

    def run_stage(self, index: int, state: State) -> tuple[State, Tensor]:
        """Run stage ``index`` (0-based) on ``state``."""
        out: tuple[State, Tensor] = self.stages[index](state)
        return out

    def forward(self, x: Tensor) -> list[Tensor]:
        state = self.initial_state(x)
        logits: list[Tensor] = []
        for stage in self.stages:
            state, out = stage(state)
            logits.append(out)
        return logits


def select_rows(state: Sequence[Tensor], rows: Tensor) -> State:
    """Keep only ``rows`` (an index or boolean mask over the batch) of every state tensor."""
    return [t.index_select(0, rows) if rows.dtype != torch.bool else t[rows] for t in state]
