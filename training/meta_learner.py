"""The L2W-DEN meta-learner: the weight-prediction network, its optimizer, its schedule.

The recipe's ``meta`` section is read here and nowhere else: the WPN's shape (``input``,
``hidden_size``, ``num_layers``), its Adam optimizer (``lr``, ``weight_decay``) and the cosine
that lr follows over the run, when the meta step runs (``interval``, :meth:`MetaLearner.due`),
how raw scores become sample weights (``norm``, ``epsilon``), the target exit distribution
(``target_p_index``) and how the meta gradient is computed (``gradient``).

The trainer asks it, per loader batch, whether the meta step is due and sets its lr; the
training step (:mod:`training.step`) asks it for the sample weights and to take a meta step on
one (train half, meta half) role. A run with ``weighting: uniform`` has no meta-learner at all.
The maths (pseudo-update, allocation, meta gradient) is in :mod:`training.meta`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import MetaSpec
from .meta import AutocastFactory, MetaBatch, SGDHyper, meta_gradient
from .schedule import cosine
from .wpn import WeightPredictionNet, normalize_weights, target_exit_distribution


@dataclass
class MetaStepResult:
    meta_loss: Tensor  # detached
    counts: Tensor  # [K] meta samples allocated to each exit
    applied: bool  # False: the gradient was not finite (fp16) and was dropped


class MetaLearner:
    """The WPN with its Adam optimizer, driven by the recipe's ``meta`` section."""

    def __init__(
        self,
        wpn: WeightPredictionNet,
        optimizer: torch.optim.Optimizer,
        spec: MetaSpec,
        num_exits: int,
    ) -> None:
        self.wpn = wpn
        self.optimizer = optimizer
        self.spec = spec
        self.target = target_exit_distribution(spec.target_p_index, num_exits)

    @classmethod
    def create(cls, spec: MetaSpec, num_exits: int, device: torch.device) -> MetaLearner:
        """A freshly initialised WPN (draws from the global torch RNG) and its optimizer."""
        wpn = WeightPredictionNet(num_exits, spec.input, spec.hidden_size, spec.num_layers)
        wpn = wpn.to(device)
        optimizer = torch.optim.Adam(wpn.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        return cls(wpn, optimizer, spec, num_exits)

    @property
    def needs_confidences(self) -> bool:
        return self.wpn.needs_confidences

    def due(self, step: int) -> bool:
        """Whether the meta step runs at ``step`` (loader batches counted over the whole run)."""
        return step % self.spec.interval == 0

    def set_lr(self, step: int, total_steps: int) -> float:
        """Set and return the WPN's lr at ``step``: the seed's cosine over the whole run."""
        lr = cosine(self.spec.lr, step, total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    @torch.no_grad()
    def weights(self, losses: Tensor, confidences: Tensor | None) -> Tensor:
        """``[n, K]`` sample weights for the real update (no gradient to the WPN)."""
        return normalize_weights(self.wpn(losses, confidences), self.spec.norm, self.spec.epsilon)

    def step(
        self,
        module: nn.Module,
        sgd: tuple[SGDHyper, Mapping[str, Tensor | None]],
        batch: MetaBatch,
        *,
        label_smoothing: float,
        autocast: AutocastFactory,
        scaler: torch.amp.GradScaler | None,
    ) -> MetaStepResult:
        """One meta step for one role: the meta gradient, averaged over processes, one Adam step.

        ``sgd`` is the real optimizer's state (:func:`training.meta.sgd_state`), which the
        pseudo-update mirrors. Under fp16 (``scaler``) the losses are scaled by the real update's
        factor, and a gradient that is not finite is dropped rather than applied.
        """
        hyper, buffers = sgd
        spec = self.spec
        result = meta_gradient(
            module,
            self.wpn,
            hyper,
            buffers,
            batch,
            norm=spec.norm,
            epsilon=spec.epsilon,
            target=self.target,
            label_smoothing=label_smoothing,
            mode=spec.gradient,
            autocast=autocast,
            loss_scale=scaler.get_scale() if scaler is not None else 1.0,
        )
        grads = result.grads
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # The pseudo-update is local to each process; the WPN's gradients are averaged.
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            grads = list(flat.split([g.numel() for g in grads]))
            grads = [g.view_as(p) for g, p in zip(grads, result.grads, strict=True)]
        applied = True
        if scaler is not None:  # fp16: a non-finite meta gradient is dropped, not applied
            applied = bool(torch.isfinite(torch.cat([g.reshape(-1) for g in grads])).all())
        if applied:
            for p, g in zip(self.wpn.parameters(), grads, strict=True):
                p.grad = g
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return MetaStepResult(result.meta_loss, result.counts, applied)
