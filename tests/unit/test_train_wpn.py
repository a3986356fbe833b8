"""The weight-prediction network, its normalisations, the target exit distribution, schedules."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import OptimSpec
from training.schedule import Schedule, cosine
from training.wpn import WeightPredictionNet, normalize_weights, target_exit_distribution

from ..training_helpers import one_thread  # noqa: F401  (autouse: one thread)


def test_col_makes_each_samples_weights_average_to_one() -> None:
    raw = torch.rand(7, 5) * 2 - 1
    w = normalize_weights(raw, "col", 0.8)
    torch.testing.assert_close(w.mean(dim=1), torch.ones(7))
    torch.testing.assert_close(w, 1 + 0.8 * (raw - raw.mean(dim=1, keepdim=True)))


def test_mat_makes_the_whole_matrix_average_to_one() -> None:
    raw = torch.rand(7, 5) * 2 - 1
    w = normalize_weights(raw, "mat", 0.3)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    assert not torch.allclose(w.mean(dim=1), torch.ones(7))  # only the whole matrix
    torch.testing.assert_close(w, 1 + 0.3 * (raw - raw.mean()))


def test_row_makes_each_exits_weights_average_to_one() -> None:
    raw = torch.rand(7, 5) * 2 - 1
    w = normalize_weights(raw, "row", 0.5)
    torch.testing.assert_close(w.mean(dim=0), torch.ones(5))


def test_epsilon_bounds_and_unknown_norm() -> None:
    raw = torch.tensor([[1.0, -1.0]])
    assert normalize_weights(raw, "col", 0.8)[0].tolist() == pytest.approx([1.8, 0.2])
    assert normalize_weights(raw, "col", 0.0).tolist() == [[1.0, 1.0]]  # no perturbation
    with pytest.raises(ValueError, match="normalisation"):
        normalize_weights(raw, "diag", 0.8)


@pytest.mark.parametrize(("kind", "width"), [("loss", 5), ("conf", 5), ("both", 10)])
def test_wpn_shapes_and_range(kind: str, width: int) -> None:
    torch.manual_seed(0)
    wpn = WeightPredictionNet(5, kind, hidden_size=500, num_layers=2)
    first = wpn.net[0]
    assert isinstance(first, torch.nn.Linear) and first.in_features == width
    linears = [m for m in wpn.net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [500, 500, 5]
    assert isinstance(wpn.net[-1], torch.nn.Tanh)
    losses = torch.rand(8, 5, requires_grad=True)
    out = wpn(10 * losses, torch.rand(8, 5))
    assert out.shape == (8, 5) and out.abs().max() < 1
    out.sum().backward()
    assert losses.grad is None  # the input is detached: no gradient reaches the losses


def test_wpn_inputs_are_what_the_kind_says() -> None:
    wpn = WeightPredictionNet(3, "both", 4, 1)
    losses, conf = torch.rand(2, 3), torch.rand(2, 3)
    torch.testing.assert_close(wpn.features(losses, conf), torch.cat([losses, conf], 1))
    wpn = WeightPredictionNet(3, "conf", 4, 1)
    torch.testing.assert_close(wpn.features(losses, conf), conf)
    with pytest.raises(ValueError):
        WeightPredictionNet(3, "logits", 4, 1)


def test_target_distribution() -> None:
    p = target_exit_distribution(15, 5)
    assert p.tolist() == pytest.approx([0.3278, 0.2458, 0.1844, 0.1383, 0.1037], abs=1e-4)
    assert float(p.sum()) == pytest.approx(1.0)
    assert target_exit_distribution(20, 4).tolist() == pytest.approx([0.25] * 4)


def test_cosine_schedule() -> None:
    s = Schedule(OptimSpec(lr=0.8), iters_per_epoch=10, epochs=3)
    assert s.lr(0) == 0.8
    assert s.lr(15) == pytest.approx(0.4)
    assert s.lr(29) == pytest.approx(0.5 * 0.8 * (1 + math.cos(math.pi * 29 / 30)))
    assert cosine(1e-4, 15, 30) == pytest.approx(0.5e-4)


def test_multistep_schedule_is_honoured() -> None:
    spec = OptimSpec(lr=0.1, schedule="multistep", milestones=[150, 225], gamma=0.1)
    s = Schedule(spec, iters_per_epoch=4, epochs=300)
    assert s.lr(149 * 4 + 3) == pytest.approx(0.1)
    assert s.lr(150 * 4) == pytest.approx(0.01)
    assert s.lr(225 * 4) == pytest.approx(0.001)


def test_warmup_then_schedule() -> None:
    spec = OptimSpec(lr=1.0, warmup_epochs=1, warmup_start=0.1)
    s = Schedule(spec, iters_per_epoch=10, epochs=11)
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(5) == pytest.approx(0.55)
    assert s.lr(10) == pytest.approx(1.0)  # the cosine starts after the warm-up
    assert s.lr(60) == pytest.approx(0.5)
    const = Schedule(OptimSpec(lr=0.3, schedule="constant"), 10, 2)
    assert const.lr(0) == const.lr(19) == 0.3
