"""The L2W-DEN meta step: pseudo-update, meta-sample allocation, meta loss, WPN gradient.

One meta step, for a train half (x, y) and a meta half (x', y') (algorithm.md section 4):

1. Weights ``w = norm(WPN(l))`` from the detached per-exit losses ``l`` of the train half; the
   weighted loss ``L = sum_k (1/n) sum_i w_ik l_ik``; its gradient ``g``.
2. A one-step SGD pseudo-update that reuses the real optimizer's lr, momentum buffers and
   weight decay: ``theta' = theta - lr * (mu * buf + g + wd * theta)`` (``buf`` absent before the
   optimizer's first step). theta and buf are constants; only ``g`` depends on the WPN.
3. The backbone at ``theta'`` (``torch.func.functional_call``, BN in train mode, on copies of the
   BN buffers so the real running statistics are untouched) on the meta half; meta samples
   allocated to exits by confidence; ``L_meta = sum_k mean_{j in S_k} CE``.
4. ``dL_meta/dphi`` for the WPN parameters phi.

Step 4 has two implementations that give the same gradient:

- ``double-backward``: ``g`` is computed with ``create_graph=True`` and autograd differentiates
  through it (the seed's way). Slow: the create-graph backward records a second graph and the
  second-order pass runs non-fused kernels.
- ``forward`` (default): because ``theta'`` is linear in ``w`` with
  ``d theta' / d w_ik = -(lr/n) grad_theta l_ik``, the chain rule gives
  ``dL_meta/dw_ik = -(1/n) * (J t)_ik`` where ``t = lr * grad_theta' L_meta`` and ``J`` is the
  Jacobian of the per-sample, per-exit losses w.r.t. theta. ``J t`` is one forward-mode pass
  (``torch.autograd.forward_ad``); ``dL_meta/dphi`` is then a backward through the tiny WPN.
  Plain backward passes only, and no second-order graph.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from exitwise.policy import confidence_and_prediction

from .wpn import WeightPredictionNet, normalize_weights

AutocastFactory = Callable[[], contextlib.AbstractContextManager[object]]


def no_autocast() -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext()


def _wide(t: Tensor) -> Tensor:
    """float32 for half-precision tensors (autocast output); float32/float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def per_exit_losses(
    logits: Sequence[Tensor], targets: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """``[n, K]`` per-sample cross-entropy at every exit (at least float32, even under autocast)."""
    return torch.stack(
        [
            F.cross_entropy(_wide(out), targets, reduction="none", label_smoothing=label_smoothing)
            for out in logits
        ],
        dim=1,
    )


def exit_confidences(logits: Sequence[Tensor]) -> Tensor:
    """``[n, K]`` max-softmax confidence at every exit (float64, detached): the exit rule's."""
    with torch.no_grad():
        return torch.stack([confidence_and_prediction(out)[0] for out in logits], dim=1)


def weighted_loss(weights: Tensor, losses: Tensor) -> Tensor:
    """``sum_k (1/n) sum_i w_ik l_ik``: a per-exit batch mean, summed over exits."""
    return (weights * losses).mean(dim=0).sum()


@dataclass(frozen=True)
class SGDHyper:
    lr: float
    momentum: float
    weight_decay: float


def sgd_state(
    optimizer: torch.optim.Optimizer, named: Sequence[tuple[str, nn.Parameter]]
) -> tuple[SGDHyper, dict[str, Tensor | None]]:
    """The real optimizer's current hyper-parameters and momentum buffers, by parameter name."""
    if len(optimizer.param_groups) != 1:
        raise ValueError("the meta step expects a single SGD parameter group")
    group = optimizer.param_groups[0]
    if group.get("nesterov") or group.get("dampening", 0) or group.get("maximize"):
        raise ValueError("the pseudo-update mirrors plain SGD with momentum only")
    hyper = SGDHyper(float(group["lr"]), float(group["momentum"]), float(group["weight_decay"]))
    buffers = {name: optimizer.state.get(p, {}).get("momentum_buffer") for name, p in named}
    return hyper, buffers


def sgd_pseudo_update(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    momentum_buffers: Mapping[str, Tensor | None],
    hyper: SGDHyper,
) -> dict[str, Tensor]:
    """``theta - lr * (mu * buf + g + wd * theta)``: torch.optim.SGD's step, differentiable in g.

    ``params`` and the buffers are used as constants (detached); gradients flow through ``grads``
    only. Without a buffer (before the optimizer's first step) the momentum term is absent.
    """
    out: dict[str, Tensor] = {}
    for name, theta in params.items():
        theta = theta.detach()
        direction = grads[name]
        if hyper.weight_decay:
            direction = direction + hyper.weight_decay * theta
        buf = momentum_buffers.get(name)
        if hyper.momentum and buf is not None:
            direction = direction + hyper.momentum * buf.detach()
        out[name] = theta - hyper.lr * direction
    return out


def allocate_meta_samples(confidences: Tensor, target: Tensor) -> Tensor:
    """The exit index (0-based) each meta sample is allocated to.

    In exit order, exit k < K takes the ``floor(m * p_k)`` most confident samples at exit k among
    those not taken yet (ties: the lower sample index first); the last exit takes the rest. An
    exit whose count is 0 gets nobody.
    """
    m, k_exits = confidences.shape
    if target.numel() != k_exits:
        raise ValueError(f"{target.numel()} target probabilities for {k_exits} exits")
    assignment = torch.full((m,), k_exits - 1, dtype=torch.long, device=confidences.device)
    taken = torch.zeros(m, dtype=torch.bool, device=confidences.device)
    for k in range(k_exits - 1):
        count = math.floor(m * float(target[k]))
        if count == 0:
            continue
        scores = confidences[:, k].masked_fill(taken, -math.inf)
        chosen = torch.sort(scores, descending=True, stable=True).indices[:count]
        assignment[chosen] = k
        taken[chosen] = True
    return assignment


def meta_objective(logits: Sequence[Tensor], targets: Tensor, assignment: Tensor) -> Tensor:
    """``sum_k mean_{j in S_k} CE(logits_k[j], y_j)``, skipping exits with no sample."""
    counts = torch.bincount(assignment, minlength=len(logits)).tolist()
    total: Tensor | None = None
    for k, out in enumerate(logits):
        if counts[k] == 0:
            continue
        rows = torch.nonzero(assignment == k).squeeze(1)
        term = F.cross_entropy(_wide(out.index_select(0, rows)), targets.index_select(0, rows))
        total = term if total is None else total + term
    assert total is not None  # the last exit always has the rest, and m >= 1
    return total


@contextlib.contextmanager
def _bn_buffers(module: nn.Module) -> Iterator[dict[str, Tensor]]:
    # Copies of the buffers: the pseudo forward updates BN running statistics of the copies,
    # never of the real model (the seed's pseudo model was a throw-away copy too).
    yield {name: buf.clone() for name, buf in module.named_buffers()}


def _load_jvp_decompositions() -> None:
    # make_dual registers torch's jvp decompositions on first use, through torch.jit.script,
    # which warns that it is deprecated: load them once, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fwad._maybe_load_decompositions()


def losses_jvp(
    module: nn.Module,
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    label_smoothing: float,
    autocast: AutocastFactory = no_autocast,
) -> Tensor:
    """``J t``: the directional derivative of the ``[n, K]`` per-exit losses along ``t``."""
    _load_jvp_decompositions()
    with _bn_buffers(module) as buffers, torch.no_grad(), fwad.dual_level():
        duals = {n: fwad.make_dual(primals[n].detach(), tangents[n]) for n in primals}
        with autocast():
            out = functional_call(module, {**duals, **buffers}, (x,))
        losses = per_exit_losses(out, y, label_smoothing)
        tangent = fwad.unpack_dual(losses).tangent
    if tangent is None:  # pragma: no cover - the losses always depend on the parameters
        return torch.zeros_like(losses)
    result: Tensor = tangent
    return result


@dataclass
class MetaResult:
    grads: list[Tensor]  # d L_meta / d phi, in wpn.parameters() order
    meta_loss: Tensor  # detached
    counts: Tensor  # meta samples per exit


@dataclass
class MetaBatch:
    """One role of a loader batch: the train half's shared forward, and the meta half."""

    losses: Tensor  # [n, K] per-exit losses of the train half, graph to the real parameters
    confidences: Tensor | None  # [n, K] of the train half (when the WPN reads them)
    x_train: Tensor
    y_train: Tensor
    x_meta: Tensor
    y_meta: Tensor


def meta_gradient(
    module: nn.Module,
    wpn: WeightPredictionNet,
    hyper: SGDHyper,
    momentum_buffers: Mapping[str, Tensor | None],
    batch: MetaBatch,
    *,
    norm: str,
    epsilon: float,
    target: Tensor,
    label_smoothing: float = 0.0,
    mode: str = "forward",
    autocast: AutocastFactory = no_autocast,
    loss_scale: float = 1.0,
) -> MetaResult:
    """``d L_meta / d phi`` for one (train half, meta half) role; changes no state.

    ``batch.losses`` must come from a forward of ``module``'s own parameters (the forward the
    real update reuses); its graph is kept (``retain_graph``) for that update.
    ``loss_scale`` multiplies the losses before each backward (fp16) and is divided out again.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    params = [p for _, p in named]
    n = batch.losses.shape[0]
    weights = normalize_weights(wpn(batch.losses, batch.confidences), norm, epsilon)
    differentiable = mode == "double-backward"
    if mode not in ("forward", "double-backward"):
        raise ValueError(f"unknown meta gradient mode {mode!r}")

    # g = dL/dtheta with the weights as constants (forward mode) or as a function of phi.
    pseudo_loss = weighted_loss(weights if differentiable else weights.detach(), batch.losses)
    # A parameter no exit depends on (possible with custom architecture arguments) has no
    # gradient; it cannot change the meta loss either, so a zero gradient stands in for it.
    grads = torch.autograd.grad(
        pseudo_loss * loss_scale,
        params,
        retain_graph=True,
        create_graph=differentiable,
        allow_unused=True,
        materialize_grads=True,
    )
    grad_map = {name: g / loss_scale for name, g in zip(names, grads, strict=True)}
    with torch.set_grad_enabled(differentiable):
        updated = sgd_pseudo_update(dict(named), grad_map, momentum_buffers, hyper)
    if not differentiable:
        updated = {name: t.requires_grad_() for name, t in updated.items()}

    with _bn_buffers(module) as buffers, autocast():
        meta_logits = functional_call(module, {**updated, **buffers}, (batch.x_meta,))
    assignment = allocate_meta_samples(exit_confidences(meta_logits), target)
    meta_loss = meta_objective(meta_logits, batch.y_meta, assignment)
    counts = torch.bincount(assignment, minlength=len(meta_logits))
    wpn_params = list(wpn.parameters())

    if differentiable:
        wgrads = torch.autograd.grad(meta_loss * loss_scale, wpn_params)
        return MetaResult([g / loss_scale for g in wgrads], meta_loss.detach(), counts)

    # v = dL_meta/dtheta'; t = lr * v; dL_meta/dw = -(1/n) J t.
    # Parameters only an empty exit uses (its head, when no meta sample was allocated to it)
    # get no gradient: their tangent is zero.
    v = torch.autograd.grad(
        meta_loss * loss_scale, [updated[name] for name in names], allow_unused=True
    )
    tangents = {
        name: (torch.zeros_like(updated[name]) if vi is None else vi * (hyper.lr / loss_scale))
        for name, vi in zip(names, v, strict=True)
    }
    # J is linear in t: bring the tangents to unit size so that they neither underflow nor
    # overflow under half precision, and divide the result by the same factor (no host sync).
    peak = torch.stack([t.abs().amax() for t in tangents.values()]).amax()
    scale = torch.where(peak > 0, 1.0 / peak, torch.ones_like(peak))
    tangents = {name: t * scale for name, t in tangents.items()}
    jt = losses_jvp(
        module, dict(named), tangents, batch.x_train, batch.y_train, label_smoothing, autocast
    )
    weight_grad = (jt / scale) * (-1.0 / n)
    wgrads = torch.autograd.grad(weights, wpn_params, grad_outputs=weight_grad)
    return MetaResult(list(wgrads), meta_loss.detach(), counts)
