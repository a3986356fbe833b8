"""One training iteration (one loader batch): two backbone updates with the halves' roles swapped.

For each role (train half, meta half), first (A, B) then (B, A):

1. One forward of the real model on the train half gives the per-exit losses. Its graph serves
   both the pseudo-update of the meta step and the real update: both start from the same weights
   on the same images, so one forward is enough, and the real model's BN running statistics are
   updated once per half, exactly as by the seed's real forward.
2. L2W, when the interval fires: the meta step (:mod:`training.meta`) and an Adam step on the
   weight-prediction network (its gradients averaged over processes).
3. The real update: ``sum_k mean_i(w_ik * l_ik)`` with ``w`` from the (new) WPN under no_grad,
   or the plain sum of per-exit mean losses for ``uniform``; one SGD step (gradients averaged
   over processes by DDP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import MetaSpec
from .meta import (
    MetaBatch,
    exit_confidences,
    meta_gradient,
    per_exit_losses,
    sgd_state,
    weighted_loss,
)
from .wpn import WeightPredictionNet, normalize_weights, target_exit_distribution


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


class TrainStep:
    """Runs iterations for one model; ``weighting`` is ``"l2w"`` or ``"uniform"``."""

    def __init__(
        self,
        model: nn.Module,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        weighting: str,
        num_exits: int,
        label_smoothing: float = 0.0,
        wpn: WeightPredictionNet | None = None,
        meta_optimizer: torch.optim.Optimizer | None = None,
        meta: MetaSpec | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if weighting not in ("l2w", "uniform"):
            raise ValueError(f"weighting must be 'l2w' or 'uniform', not {weighting!r}")
        if weighting == "l2w" and (wpn is None or meta_optimizer is None or meta is None):
            raise ValueError("L2W needs the WPN, its optimizer and the meta settings")
        self.model = model  # the (possibly DDP-wrapped) model: the real update goes through it
        self.module = module  # the plain network: the pseudo forward is functional on it
        self.optimizer = optimizer
        self.weighting = weighting
        self.label_smoothing = label_smoothing
        self.wpn = wpn
        self.meta_optimizer = meta_optimizer
        self.meta = meta
        self.autocast = autocast or contextlib.nullcontext
        self.scaler = scaler
        self.named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.target = (
            target_exit_distribution(meta.target_p_index, num_exits) if meta is not None else None
        )

    def __call__(self, x: Tensor, y: Tensor, do_meta: bool = False) -> StepStats:
        if x.shape[0] < 2:
            raise ValueError("a batch needs at least two images (two halves)")
        xa, xb = x.chunk(2)
        ya, yb = y.chunk(2)
        roles = ((xa, ya, xb, yb), (xb, yb, xa, ya))
        losses, objectives, weights, meta_losses, counts = [], [], [], [], []
        skipped = 0
        for x_tr, y_tr, x_me, y_me in roles:
            out = self._half(x_tr, y_tr, x_me, y_me, do_meta and self.weighting == "l2w")
            losses.append(out[0])
            objectives.append(out[1])
            if out[2] is not None:
                weights.append(out[2])
            if out[3] is not None:
                meta_losses.append(out[3][0])
                counts.append(out[3][1])
            skipped += out[4]
        return StepStats(
            losses=torch.stack(losses).mean(0),
            objective=torch.stack(objectives).mean(),
            weights=torch.cat(weights) if weights else None,
            meta_loss=torch.stack(meta_losses).mean() if meta_losses else None,
            meta_counts=torch.stack(counts).sum(0) if counts else None,
            meta_skipped=skipped,
        )

    def _half(
        self, x_tr: Tensor, y_tr: Tensor, x_me: Tensor, y_me: Tensor, do_meta: bool
    ) -> tuple[Tensor, Tensor, Tensor | None, tuple[Tensor, Tensor] | None, int]:
        with self.autocast():
            logits = self.model(x_tr)
        losses = per_exit_losses(logits, y_tr, self.label_smoothing)
        weights: Tensor | None = None
        meta_out: tuple[Tensor, Tensor] | None = None
        skipped = 0
        if self.weighting == "uniform":
            loss = losses.mean(dim=0).sum()
        else:
            assert self.wpn is not None and self.meta is not None
            # Only a WPN that reads confidences needs them (the published input is the losses).
            confidences = exit_confidences(logits) if self.wpn.needs_confidences else None
            if do_meta:
                meta_out, ok = self._meta_step(losses, confidences, x_tr, y_tr, x_me, y_me)
                skipped = 0 if ok else 1
            with torch.no_grad():
                weights = normalize_weights(
                    self.wpn(losses, confidences), self.meta.norm, self.meta.epsilon
                )
            loss = weighted_loss(weights, losses)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return losses.detach().mean(0), loss.detach(), weights, meta_out, skipped

    def _meta_step(
        self,
        losses: Tensor,
        confidences: Tensor | None,
        x_tr: Tensor,
        y_tr: Tensor,
        x_me: Tensor,
        y_me: Tensor,
    ) -> tuple[tuple[Tensor, Tensor], bool]:
        assert self.wpn is not None and self.meta is not None and self.meta_optimizer is not None
        assert self.target is not None
        hyper, buffers = sgd_state(self.optimizer, self.named)
        result = meta_gradient(
            self.module,
            self.wpn,
            hyper,
            buffers,
            MetaBatch(losses, confidences, x_tr, y_tr, x_me, y_me),
            norm=self.meta.norm,
            epsilon=self.meta.epsilon,
            target=self.target,
            label_smoothing=self.label_smoothing,
            mode=self.meta.gradient,
            autocast=self.autocast,
            loss_scale=self.scaler.get_scale() if self.scaler is not None else 1.0,
        )
        grads = result.grads
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # The pseudo-update is local to each process; the WPN's gradients are averaged.
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            grads = list(flat.split([g.numel() for g in grads]))
            grads = [g.view_as(p) for g, p in zip(grads, result.grads, strict=True)]
        ok = True
        if self.scaler is not None:  # fp16: a non-finite meta gradient is dropped, not applied
            ok = bool(torch.isfinite(torch.cat([g.reshape(-1) for g in grads])).all())
        if ok:
            for p, g in zip(self.wpn.parameters(), grads, strict=True):
                p.grad = g
            self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        return (result.meta_loss, result.counts), ok
