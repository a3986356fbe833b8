"""Per-exit MFLOPs and parameters against the seed's published table (algorithm.md 1.4).

Our counter (torch.utils.flop_counter) sees convolutions and linear layers only; the seed's also
counts ReLU and pooling elements. So ours must be slightly below: within 1.5 % for every exit.
Parameters are counted the same way by both; the published figures are rounded to 0.01 M, so
ours must be within 0.5 % or within that rounding.
"""

from __future__ import annotations

import itertools

import pytest

from exitwise.flops import exit_costs
from exitwise.models import create_model, get_preset

# name, overrides, MFLOPs per exit, M params per exit
SEED_TABLE = [
    ("msdnet-cifar100", {}, [6.86, 14.35, 27.54, 41.71, 58.48], [0.30, 0.65, 1.02, 1.49, 2.08]),
    ("msdnet-cifar10", {}, [6.85, 14.33, 27.50, 41.67, 58.42], [0.29, 0.63, 0.98, 1.45, 2.02]),
    (
        "msdnet-imagenet-step4",
        {},
        [339.90, 685.46, 1008.16, 1254.47, 1360.53],
        [4.24, 8.77, 13.07, 16.75, 23.96],
    ),
    (
        "msdnet-imagenet-step6",
        {"base": 4},
        [339.90, 924.19, 1517.43, 1991.60, 2194.42],
        [4.24, 10.78, 17.84, 24.58, 38.68],
    ),
    (
        "msdnet-imagenet-step7",
        {"base": 4},
        [339.90, 1058.27, 1811.88, 2422.16, 2684.44],
        [4.24, 11.89, 20.58, 29.16, 47.54],
    ),
    (
        "msdnet-imagenet-step6",
        {},
        [514.66, 1171.18, 1844.52, 2501.40, 2742.06],
        [7.08, 15.69, 24.01, 42.19, 56.53],
    ),
    (
        "msdnet-imagenet-step7",
        {},
        [615.69, 1436.39, 2283.21, 2967.42, 3253.79],
        [8.76, 20.15, 31.73, 41.86, 62.31],
    ),
]


@pytest.mark.parametrize(
    ("name", "overrides", "mflops", "params"),
    SEED_TABLE,
    ids=[f"{r[0]}{'-base4' if r[1] else ''}" for r in SEED_TABLE],
)
def test_exit_costs_match_the_seed(
    name: str, overrides: dict[str, int], mflops: list[float], params: list[float]
) -> None:
    preset = get_preset(name)
    costs = exit_costs(create_model(name, **overrides), preset.input_size, preset.in_channels)
    assert [c.exit for c in costs] == [1, 2, 3, 4, 5]
    for cost, ref_f, ref_p in zip(costs, mflops, params, strict=True):
        assert 0.985 * ref_f <= cost.mflops < ref_f, f"exit {cost.exit}: {cost.mflops:.2f} MFLOPs"
        assert abs(cost.params_m - ref_p) <= 0.005 * ref_p + 0.005, (
            f"exit {cost.exit}: {cost.params_m:.4f} M params"
        )


def test_costs_are_cumulative_and_increasing() -> None:
    preset = get_preset("ranet-cifar100")
    costs = exit_costs(create_model("ranet-cifar100"), preset.input_size, preset.in_channels)
    assert len(costs) == 8
    assert all(b.mflops > a.mflops for a, b in itertools.pairwise(costs))
    model = create_model("ranet-cifar100")
    assert costs[-1].params_m == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)


def test_counting_leaves_the_model_in_its_mode() -> None:
    model = create_model("msdnet-fmnist").train()
    exit_costs(model, 32, 1)
    assert model.training
