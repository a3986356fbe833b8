"""One training iteration (one loader batch): two backbone updates with the halves' roles swapped.

For each role (train half, meta half), first (A, B) then (B, A):

1. One forward of the real model on the train half gives the per-exit losses. Its graph serves
   both the pseudo-update of the meta step and the real update: both start from the same weights
   on the same images, so one forward is enough, and the real model's BN running statistics are
   updated once per half, exactly as by the seed's real forward.
2. L2W, when the meta step is due: :meth:`training.meta_learner.MetaLearner.step` (the meta
   gradient of :mod:`training.meta`, averaged over processes, and an Adam step on the WPN).
3. The real update: ``sum_k mean_i(w_ik * l_ik)`` with ``w`` from the (new) WPN under no_grad,
   or the plain sum of per-exit mean losses for ``uniform``; one SGD step (gradients averaged
   over processes by DDP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .meta import MetaBatch, exit_confidences, per_exit_losses, sgd_state, weighted_loss
from .meta_learner import MetaLearner, MetaStepResult


@dataclass
class StepStats:
    """What one iteration reports (tensors stay on the device until logged)."""

    losses: Tensor  # [K] mean per-exit training loss over both halves
    objective: Tensor  # the minimised loss, averaged over the two halves
    weights: Tensor | None = None  # [B_local, K] the sample weights used (L2W)
    meta_loss: Tensor | None = None  # averaged over the two halves, when the meta step ran
    meta_counts: Tensor | None = None  # [K] meta samples per exit, both halves together
    meta_skipped: int = 0  # halves whose meta gradient was not finite (fp16) and was dropped
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class _HalfStats:
    losses: Tensor  # [K] mean per-exit loss of the train half
    objective: Tensor
    weights: Tensor | None  # L2W
    meta: MetaStepResult | None  # when the meta step ran


class TrainStep:
    """Runs iterations for one model: L2W with a ``meta`` learner, the uniform baseline without."""

    def __init__(
        self,
        model: nn.Module,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        meta: MetaLearner | None = None,
        label_smoothing: float = 0.0,
        autocast: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.model = model  # the (possibly DDP-wrapped) model: the real update goes through it
        self.module = module  # the plain network: the pseudo forward is functional on it
        self.optimizer = optimizer
        self.meta = meta
        self.label_smoothing = label_smoothing
        self.autocast = autocast or contextlib.nullcontext
        self.scaler = scaler
        self.named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    def __call__(self, x: Tensor, y: Tensor, do_meta: bool = False) -> StepStats:
        """One iteration; ``do_meta``: run the meta step too (ignored without a meta learner)."""
        if x.shape[0] < 2:
            raise ValueError("a batch needs at least two images (two halves)")
        xa, xb = x.chunk(2)
        ya, yb = y.chunk(2)
        halves = [
            self._half(x_tr, y_tr, x_me, y_me, do_meta)
            for x_tr, y_tr, x_me, y_me in ((xa, ya, xb, yb), (xb, yb, xa, ya))
        ]
        weights = [h.weights for h in halves if h.weights is not None]
        metas = [h.meta for h in halves if h.meta is not None]
        return StepStats(
            losses=torch.stack([h.losses for h in halves]).mean(0),
            objective=torch.stack([h.objective for h in halves]).mean(),
            weights=torch.cat(weights) if weights else None,
            meta_loss=torch.stack([m.meta_loss for m in metas]).mean() if metas else None,
            meta_counts=torch.stack([m.counts for m in metas]).sum(0) if metas else None,
            meta_skipped=sum(not m.applied for m in metas),
        )

    def _half(
        self, x_tr: Tensor, y_tr: Tensor, x_me: Tensor, y_me: Tensor, do_meta: bool
    ) -> _HalfStats:
        with self.autocast():
            logits = self.model(x_tr)
        losses = per_exit_losses(logits, y_tr, self.label_smoothing)
        weights: Tensor | None = None
        meta: MetaStepResult | None = None
        if self.meta is None:
            loss = losses.mean(dim=0).sum()
        else:
            # Only a WPN that reads confidences needs them (the published input is the losses).
            confidences = exit_confidences(logits) if self.meta.needs_confidences else None
            if do_meta:
                meta = self.meta.step(
                    self.module,
                    sgd_state(self.optimizer, self.named),
                    MetaBatch(losses, confidences, x_tr, y_tr, x_me, y_me),
                    label_smoothing=self.label_smoothing,
                    autocast=self.autocast,
                    scaler=self.scaler,
                )
            weights = self.meta.weights(losses, confidences)
            loss = weighted_loss(weights, losses)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return _HalfStats(losses.detach().mean(0), loss.detach(), weights, meta)
