"""The meta-learner: what it reads from the recipe's meta section, its schedule, its step."""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any

import torch

from training.config import MetaSpec
from training.meta import (
    MetaBatch,
    SGDHyper,
    exit_confidences,
    meta_gradient,
    per_exit_losses,
    sgd_state,
)
from training.meta_learner import MetaLearner
from training.wpn import normalize_weights, target_exit_distribution

from ..training_helpers import (
    one_thread,  # noqa: F401  (autouse: one thread)
    tiny_model,
)


def test_create_builds_the_wpn_and_adam_from_the_spec() -> None:
    spec = MetaSpec(input="both", hidden_size=12, num_layers=2, lr=3e-4, weight_decay=5e-4,
                    target_p_index=10)  # fmt: skip
    meta = MetaLearner.create(spec, 5, torch.device("cpu"))
    widths = [m.out_features for m in meta.wpn.net if isinstance(m, torch.nn.Linear)]
    assert widths == [12, 12, 5] and meta.wpn.net[0].in_features == 10  # losses + confidences
    assert meta.needs_confidences
    group = meta.optimizer.param_groups[0]
    assert isinstance(meta.optimizer, torch.optim.Adam)
    assert (group["lr"], group["weight_decay"]) == (3e-4, 5e-4)
    torch.testing.assert_close(meta.target, target_exit_distribution(10, 5))


def test_due_follows_the_interval_over_the_whole_run() -> None:
    meta = MetaLearner.create(MetaSpec(hidden_size=4, interval=3), 4, torch.device("cpu"))
    assert [s for s in range(10) if meta.due(s)] == [0, 3, 6, 9]


def test_lr_follows_the_cosine_over_the_run() -> None:
    meta = MetaLearner.create(MetaSpec(hidden_size=4, lr=2e-4), 4, torch.device("cpu"))
    assert meta.set_lr(0, 100) == 2e-4
    assert meta.set_lr(50, 100) == 0.5 * 2e-4 * (1 + math.cos(math.pi / 2))
    assert meta.set_lr(100, 100) == 0.0
    assert all(group["lr"] == 0.0 for group in meta.optimizer.param_groups)


def test_weights_are_the_normalised_wpn_scores_without_a_graph() -> None:
    torch.manual_seed(0)
    meta = MetaLearner.create(MetaSpec(hidden_size=8, norm="row", epsilon=0.5), 4,
                              torch.device("cpu"))  # fmt: skip
    losses = torch.rand(6, 4, requires_grad=True)
    w = meta.weights(losses, None)
    assert not w.requires_grad
    torch.testing.assert_close(w, normalize_weights(meta.wpn(losses), "row", 0.5))


def _problem() -> tuple[torch.nn.Module, MetaBatch, tuple[SGDHyper, dict[str, Any]]]:
    model = tiny_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    logits = model(x[:8])
    batch = MetaBatch(per_exit_losses(logits, y[:8]), exit_confidences(logits),
                      x[:8], y[:8], x[8:], y[8:])  # fmt: skip
    return model, batch, sgd_state(opt, list(model.named_parameters()))


def test_step_is_the_meta_gradient_then_one_adam_step() -> None:
    torch.manual_seed(0)
    model, batch, (hyper, buffers) = _problem()
    spec = MetaSpec(hidden_size=16, norm="col", epsilon=0.8, lr=1e-3)
    meta = MetaLearner.create(spec, model.num_exits, torch.device("cpu"))
    by_hand = copy.deepcopy(meta.wpn)
    by_hand_opt = torch.optim.Adam(by_hand.parameters(), lr=1e-3, weight_decay=spec.weight_decay)

    result = meta.step(model, (hyper, buffers), batch, label_smoothing=0.0,
                       autocast=contextlib.nullcontext, scaler=None)  # fmt: skip
    expected = meta_gradient(model, by_hand, hyper, buffers, batch, norm="col", epsilon=0.8,
                             target=meta.target)  # fmt: skip
    for p, g in zip(by_hand.parameters(), expected.grads, strict=True):
        p.grad = g
    by_hand_opt.step()

    assert result.applied and int(result.counts.sum()) == 8
    torch.testing.assert_close(result.meta_loss, expected.meta_loss, rtol=0, atol=0)
    for a, b in zip(meta.wpn.parameters(), by_hand.parameters(), strict=True):
        assert torch.equal(a, b)
        assert a.grad is None  # cleared after the step


def test_a_meta_gradient_that_is_not_finite_is_dropped_under_fp16() -> None:
    torch.manual_seed(1)
    model, batch, sgd = _problem()
    meta = MetaLearner.create(MetaSpec(hidden_size=16), model.num_exits, torch.device("cpu"))
    before = copy.deepcopy(meta.wpn.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)  # the scaled losses overflow
    result = meta.step(model, sgd, batch, label_smoothing=0.0, autocast=contextlib.nullcontext,
                       scaler=scaler)  # fmt: skip
    assert not result.applied
    for name, tensor in meta.wpn.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(p.grad is None for p in meta.wpn.parameters())
