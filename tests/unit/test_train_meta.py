"""The meta step: pseudo-update, meta gradient (finite differences, both modes), allocation."""

from __future__ import annotations

import copy

import pytest
import torch

from training.meta import (
    MetaBatch,
    SGDHyper,
    allocate_meta_samples,
    exit_confidences,
    meta_gradient,
    meta_objective,
    per_exit_losses,
    sgd_pseudo_update,
    sgd_state,
)
from training.wpn import WeightPredictionNet, target_exit_distribution

from ..training_helpers import (
    one_thread,  # noqa: F401  (autouse: one thread)
    tiny_model,
)

# --- pseudo-update ------------------------------------------------------------------------------


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    loss = per_exit_losses(model(x), y).mean(0).sum()
    names = [n for n, _ in model.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, list(model.parameters())), strict=True))


@pytest.mark.parametrize("with_buffers", [False, True])
def test_pseudo_update_equals_sgd_momentum_step(with_buffers: bool) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(6, 1, 32, 32), torch.randint(0, 10, (6,))
    if with_buffers:  # one real step creates the momentum buffers
        opt.zero_grad()
        per_exit_losses(model(x), y).sum().backward()
        opt.step()
    grads = _grads(model, x, y)
    named = list(model.named_parameters())
    hyper, buffers = sgd_state(opt, named)
    assert hyper == SGDHyper(0.1, 0.9, 1e-3)
    assert all((b is not None) == with_buffers for b in buffers.values())
    pseudo = sgd_pseudo_update(dict(named), grads, buffers, hyper)

    # By hand: buf' = mu * buf + (g + wd * theta), theta' = theta - lr * buf'.
    for name, p in named:
        d = grads[name] + 1e-3 * p.detach()
        if with_buffers:
            d = 0.9 * buffers[name] + d  # type: ignore[operator]
        torch.testing.assert_close(
            pseudo[name], p.detach() - 0.1 * d, rtol=1e-6, atol=1e-7
        )  # float32 rounding

    # And torch.optim.SGD itself, given the same gradients.
    for p in model.parameters():
        p.grad = grads[next(n for n, q in named if q is p)].clone()
    opt.step()
    for name, p in named:
        torch.testing.assert_close(
            pseudo[name], p.detach(), rtol=1e-6, atol=1e-7
        )  # float32 rounding


def test_pseudo_update_is_differentiable_in_the_gradient_only() -> None:
    theta = {"w": torch.tensor([1.0, 2.0], requires_grad=True)}
    g = {"w": torch.tensor([0.5, -1.0], requires_grad=True)}
    out = sgd_pseudo_update(theta, g, {"w": torch.ones(2)}, SGDHyper(0.1, 0.9, 0.01))
    out["w"].sum().backward()
    assert theta["w"].grad is None  # theta is a constant
    torch.testing.assert_close(g["w"].grad, torch.full((2,), -0.1))


# --- meta gradient --------------------------------------------------------------------------------


def _setup(dtype: torch.dtype = torch.float64, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    model = tiny_model().to(dtype).train()
    wpn = WeightPredictionNet(model.num_exits, "loss", 16, 2).to(dtype)
    x = torch.randn(16, 1, 32, 32, dtype=dtype)
    y = torch.randint(0, 10, (16,))
    buffers = {n: 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    return model, wpn, x, y, buffers


def _meta(model, wpn, x, y, buffers, mode="forward"):  # type: ignore[no-untyped-def]
    logits = model(x[:8])
    losses = per_exit_losses(logits, y[:8])
    batch = MetaBatch(losses, exit_confidences(logits), x[:8], y[:8], x[8:], y[8:])
    return meta_gradient(
        model,
        wpn,
        SGDHyper(0.5, 0.9, 1e-3),
        buffers,
        batch,
        norm="col",
        epsilon=0.8,
        target=target_exit_distribution(15, model.num_exits),
        mode=mode,
    )


def test_meta_gradient_nonzero_and_matches_finite_differences() -> None:
    model, wpn, x, y, buffers = _setup()
    result = _meta(model, wpn, x, y, buffers)
    flat = torch.cat([g.reshape(-1) for g in result.grads])
    assert flat.abs().sum() > 0 and torch.isfinite(flat).all()
    params = list(wpn.parameters())
    gen = torch.Generator().manual_seed(1)
    # ReLU kinks make the loss piecewise smooth: a small step stays on one piece.
    h = 1e-7
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p.add_(sign * h * d)
            values.append(float(_meta(model, wpn, x, y, buffers).meta_loss))
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p.sub_(sign * h * d)
        numeric = (values[0] - values[1]) / (2 * h)
        analytic = sum(float((g * d).sum()) for g, d in zip(result.grads, direction, strict=True))
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_forward_mode_equals_double_backward() -> None:
    model, wpn, x, y, buffers = _setup(seed=3)
    fwd = _meta(model, wpn, x, y, buffers, "forward")
    dbl = _meta(model, wpn, x, y, buffers, "double-backward")
    torch.testing.assert_close(fwd.meta_loss, dbl.meta_loss)
    for a, b in zip(fwd.grads, dbl.grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def test_meta_step_leaves_the_real_model_alone() -> None:
    model, wpn, x, y, buffers = _setup()
    model(x[:8])  # the shared forward updates BN statistics once, as the real forward does
    before = copy.deepcopy(model.state_dict())
    logits = model(x[:8])
    after_forward = copy.deepcopy(model.state_dict())
    losses = per_exit_losses(logits, y[:8])
    batch = MetaBatch(losses, exit_confidences(logits), x[:8], y[:8], x[8:], y[8:])
    for mode in ("forward", "double-backward"):
        meta_gradient(model, wpn, SGDHyper(0.5, 0.9, 0.0), buffers, batch, norm="mat",
                      epsilon=0.3, target=target_exit_distribution(15, 4), mode=mode)  # fmt: skip
        for k, v in model.state_dict().items():
            assert torch.equal(v, after_forward[k]), k
        assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(before["stages.0.first.layers.0.1.running_mean"],
                           after_forward["stages.0.first.layers.0.1.running_mean"])  # fmt: skip


# --- allocation --------------------------------------------------------------------------------


def test_allocation_most_confident_first_last_takes_the_rest() -> None:
    conf = torch.tensor(
        [[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.8, 0.95, 0.0], [0.1, 0.7, 0.0], [0.3, 0.1, 0.0]]
    )
    p = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)  # floor(5*0.4) = 2 per early exit
    # exit 1: samples 0, 2; exit 2 (among the rest): 1, 3; exit 3: 4.
    assert allocate_meta_samples(conf, p).tolist() == [0, 1, 0, 1, 2]


def test_allocation_ties_go_to_the_lower_index() -> None:
    conf = torch.tensor([[0.5, 0.0], [0.7, 0.0], [0.7, 0.0], [0.7, 0.0]])
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)  # 2 exit at 1
    assert allocate_meta_samples(conf, p).tolist() == [1, 0, 0, 1]


def test_allocation_empty_exits_and_small_halves() -> None:
    conf = torch.rand(3, 4)
    p = target_exit_distribution(15, 4)  # 3 * p_k < 1 for k >= 2: floor gives 0 samples
    assignment = allocate_meta_samples(conf, p)
    assert assignment.tolist().count(0) == 1  # floor(3 * 0.366) = 1
    assert assignment.tolist().count(1) == 0 and assignment.tolist().count(2) == 0
    assert assignment.tolist().count(3) == 2  # the last exit takes the rest
    logits = [torch.randn(3, 10, requires_grad=True) for _ in range(4)]
    y = torch.randint(0, 10, (3,))
    loss = meta_objective(logits, y, assignment)
    loss.backward()
    assert logits[1].grad is None and logits[2].grad is None  # skipped: not in the loss
    expected = torch.nn.functional.cross_entropy(logits[0][assignment == 0], y[assignment == 0])
    expected = expected + torch.nn.functional.cross_entropy(
        logits[3][assignment == 3], y[assignment == 3]
    )
    torch.testing.assert_close(loss, expected)


def test_allocation_counts_follow_the_target() -> None:
    conf = torch.rand(512, 5)
    p = target_exit_distribution(15, 5)
    counts = torch.bincount(allocate_meta_samples(conf, p), minlength=5).tolist()
    assert counts[:4] == [int(512 * float(v)) for v in p[:4]]
    assert sum(counts) == 512


def test_meta_gradient_with_empty_exits_in_both_modes() -> None:
    # A meta half of 3: exits 2 and 3 get no sample, so their heads get no meta gradient.
    model, wpn, x, y, buffers = _setup(seed=5)
    logits = model(x[:8])
    losses = per_exit_losses(logits, y[:8])
    batch = MetaBatch(losses, exit_confidences(logits), x[:8], y[:8], x[8:11], y[8:11])
    results = [
        meta_gradient(
            model,
            wpn,
            SGDHyper(0.5, 0.9, 0.0),
            buffers,
            batch,
            norm="col",
            epsilon=0.8,
            target=target_exit_distribution(15, 4),
            mode=mode,
        )
        for mode in ("forward", "double-backward")
    ]
    assert results[0].counts.tolist() == [1, 0, 0, 2]
    for a, b in zip(results[0].grads, results[1].grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def test_meta_gradient_with_confidence_inputs() -> None:
    model, _, x, y, buffers = _setup(seed=2)
    wpn = WeightPredictionNet(model.num_exits, "both", 8, 1).double()
    logits = model(x[:8])
    losses = per_exit_losses(logits, y[:8])
    target = target_exit_distribution(15, 4)
    hyper = SGDHyper(0.5, 0.9, 0.0)
    grads = []
    for mode in ("forward", "double-backward"):
        batch = MetaBatch(losses, exit_confidences(logits), x[:8], y[:8], x[8:], y[8:])
        result = meta_gradient(
            model, wpn, hyper, buffers, batch, norm="row", epsilon=0.5, target=target, mode=mode
        )
        grads.append(torch.cat([g.flatten() for g in result.grads]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError, match="needs the confidences"):
        wpn(losses)
