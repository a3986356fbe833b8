"""The threshold rule against a plain-loop transcription of the seed's, and its edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from calibration.thresholds import (
    ThresholdRule,
    exit_distribution,
    exit_quota,
    find_thresholds,
    midpoint,
)
from exitwise.policy import decide_exits

INF = math.inf


def seed_walk(conf: np.ndarray, quota: list[int]) -> tuple[list[float], list[float], list[int]]:
    """The seed's ``dynamic_eval_find_threshold`` one image at a time, plus where the midpoint
    thresholds must sit: returns (seed thresholds, highest staying confidence, exits)."""
    n, k = conf.shape
    seed_t = [INF] * k
    seed_t[-1] = -INF
    below = [-INF] * k
    filtered = [False] * n
    for j in range(k - 1):
        out_n = quota[j]
        order = sorted(range(n), key=lambda i: -conf[i, j])
        count = 0
        for i in order:
            if not filtered[i]:
                count += 1
                if count == out_n:
                    seed_t[j] = float(conf[i, j])
                    break
        staying = [conf[i, j] for i in range(n) if not filtered[i] and conf[i, j] < seed_t[j]]
        if seed_t[j] != INF and staying:
            below[j] = float(max(staying))
        for i in range(n):
            if conf[i, j] >= seed_t[j]:
                filtered[i] = True
    exits = []
    for i in range(n):
        for j in range(k):
            if j == k - 1 or conf[i, j] >= seed_t[j]:
                exits.append(j)
                break
    return seed_t, below, exits


def check_against_seed(conf: np.ndarray, quota: list[int]) -> None:
    seed_t, below, exits = seed_walk(conf, quota)
    walk = ThresholdRule(conf).walk(quota)
    # Same partition, through the core rule, with our thresholds and with the seed's.
    ours = decide_exits(conf, walk.thresholds).tolist()
    assert ours == exits
    assert decide_exits(conf, np.array(seed_t)).tolist() == exits
    assert walk.counts.tolist() == np.bincount(exits, minlength=conf.shape[1]).tolist()
    assert walk.boundaries.tolist() == seed_t
    for j, (t, b, lo) in enumerate(zip(walk.thresholds, seed_t, below, strict=True)):
        if j == conf.shape[1] - 1:
            assert t == -INF
        elif b == INF:
            assert t == INF  # nobody exits here
        elif lo == -INF:
            assert t == b  # everyone still running leaves: the boundary itself
        else:
            assert lo < t <= b
            assert t == pytest.approx((lo + b) / 2, rel=1e-15)


def test_hand_made_partition_and_midpoints() -> None:
    conf = np.array(
        [
            [0.95, 0.99, 0.99],
            [0.90, 0.50, 0.99],
            [0.80, 0.85, 0.99],
            [0.70, 0.60, 0.99],
            [0.60, 0.70, 0.99],
            [0.30, 0.20, 0.99],
        ]
    )
    walk = ThresholdRule(conf).walk([2, 2])
    # Exit 1 takes 0.95 and 0.90; of the rest, exit 2 takes 0.85 and 0.70.
    assert decide_exits(conf, walk.thresholds).tolist() == [0, 0, 1, 2, 1, 2]
    assert walk.counts.tolist() == [2, 2, 2]
    assert walk.thresholds[0] == pytest.approx((0.90 + 0.80) / 2)
    assert walk.thresholds[1] == pytest.approx((0.70 + 0.60) / 2)
    assert walk.thresholds[2] == -INF
    check_against_seed(conf, [2, 2])


def test_ties_all_exit_together() -> None:
    conf = np.array([[0.9, 0.1], [0.8, 0.1], [0.8, 0.1], [0.8, 0.1], [0.5, 0.1]])
    walk = ThresholdRule(conf).walk([2])
    # Two wanted, but the second and third and fourth are tied: all three leave with the first.
    assert walk.counts.tolist() == [4, 1]
    assert 0.5 < walk.thresholds[0] <= 0.8
    check_against_seed(conf, [2])


def test_zero_quota_and_too_few_remaining_mean_nobody_exits() -> None:
    conf = np.array([[0.9, 0.9, 0.9], [0.9, 0.8, 0.9], [0.9, 0.7, 0.9], [0.2, 0.6, 0.9]])
    # Ties at exit 1 take three images, so only one remains for a quota of two at exit 2.
    walk = ThresholdRule(conf).walk([1, 2])
    assert walk.counts.tolist() == [3, 0, 1]
    assert walk.thresholds[1] == INF
    check_against_seed(conf, [1, 2])
    walk = ThresholdRule(conf).walk([0, 0])
    assert walk.counts.tolist() == [0, 0, 4]
    assert walk.thresholds.tolist() == [INF, INF, -INF]


def test_everyone_at_the_first_exit_uses_the_boundary() -> None:
    conf = np.array([[0.9, 0.1], [0.4, 0.1], [0.6, 0.1]])
    walk = ThresholdRule(conf).walk([3])
    assert walk.counts.tolist() == [3, 0]
    assert walk.thresholds[0] == 0.4


def test_single_exit() -> None:
    walk = ThresholdRule(np.array([[0.3], [0.9]])).walk([])
    assert walk.counts.tolist() == [2]
    assert walk.thresholds.tolist() == [-INF]


def test_exit_distribution_matches_the_seed() -> None:
    p = exit_distribution(0.75, 5)
    assert p == pytest.approx([0.3278, 0.2458, 0.1844, 0.1383, 0.1037], abs=5e-5)
    assert exit_distribution(1.0, 4).tolist() == [0.25] * 4
    for q in (1e-15, 1e15, 0.05, 1.95):
        assert exit_distribution(q, 5).sum() == pytest.approx(1.0)
    # The solver's ends: everyone at exit 1, everyone at the last exit.
    assert exit_quota(1e-15, 50_000, 5).tolist() == [50_000, 0, 0, 0]
    assert exit_quota(1e15, 50_000, 5).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        exit_distribution(0.0, 5)
    with pytest.raises(ValueError):
        exit_distribution(math.nan, 5)


@pytest.mark.parametrize("n", [7, 1000, 5000, 50000])
def test_quota_is_floor_of_n_p(n: int) -> None:
    for step in range(1, 40):
        q = step / 20
        plain = np.array([q**j for j in range(1, 6)])
        exact = n * plain / plain.sum()
        quota = exit_quota(q, n, 5)
        for j in range(4):
            # Where n p_k is an integer up to rounding, we take the integer; elsewhere floor().
            near = abs(exact[j] - round(exact[j])) < 1e-6
            assert quota[j] == (round(exact[j]) if near else math.floor(exact[j]))
    assert exit_quota(1.0, 5000, 5).tolist() == [1000] * 4


def test_midpoint_stays_in_the_half_open_interval() -> None:
    a = 0.5
    b = np.nextafter(a, 1.0)
    assert midpoint(a, b) == b  # no float strictly between: the upper end
    assert midpoint(0.2, 0.4) == pytest.approx(0.3)


confidences = arrays(
    np.float64,
    st.tuples(st.integers(1, 30), st.integers(1, 5)),
    elements=st.one_of(
        st.sampled_from([0.1, 0.25, 0.5, 0.75, 0.9, 1.0]),
        st.floats(0.1, 1.0, allow_nan=False),
    ),
)


@settings(max_examples=300, deadline=None)
@given(conf=confidences, q=st.floats(0.02, 5.0))
def test_matches_the_seed_loop(conf: np.ndarray, q: float) -> None:
    quota = exit_quota(q, conf.shape[0], conf.shape[1]).tolist()
    check_against_seed(conf, quota)
    assert find_thresholds(conf, q).tolist() == ThresholdRule(conf).walk(quota).thresholds.tolist()


@settings(max_examples=200, deadline=None)
@given(
    conf=confidences,
    quota=st.lists(st.integers(0, 12), min_size=4, max_size=4),
)
def test_matches_the_seed_loop_for_any_quota(conf: np.ndarray, quota: list[int]) -> None:
    k = conf.shape[1]
    check_against_seed(conf, quota[: k - 1])


def test_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        ThresholdRule(np.array([[0.5, math.nan]]))
    with pytest.raises(ValueError):
        ThresholdRule(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        ThresholdRule(np.full((4, 3), 0.5)).walk([1])
