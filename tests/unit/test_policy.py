"""The exit rule: hand-made cases and a property test against a plain loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from exitwise.policy import confidence_and_prediction, decide_exits, stops_here

INF = math.inf


def reference(conf: np.ndarray, thr: np.ndarray, cap: np.ndarray | None) -> list[int]:
    """The rule written as plainly as possible, one image at a time."""
    n, k = conf.shape
    out = []
    for i in range(n):
        row_thr = thr[i] if thr.ndim == 2 else thr
        limit = k - 1 if cap is None else min(k - 1, int(cap[i]))
        chosen = limit
        for j in range(limit):
            if conf[i, j] >= row_thr[j]:
                chosen = j
                break
        out.append(chosen)
    return out


def test_hand_made_cases() -> None:
    conf = np.array(
        [
            [0.9, 0.95, 0.99],  # exits at 1
            [0.5, 0.8, 0.9],  # exits at 2 (0.8 == threshold: ties exit)
            [0.1, 0.2, 0.3],  # nothing passes: the last exit takes it
            [0.7, 0.7, 0.7],  # exactly at the first threshold
        ]
    )
    thr = np.array([0.7, 0.8, -INF])
    assert decide_exits(conf, thr).tolist() == [0, 1, 2, 0]


def test_all_exit_at_first_and_none_before_last() -> None:
    conf = np.random.default_rng(0).uniform(0, 1, size=(50, 4))
    assert decide_exits(conf, np.array([0.0, 0.0, 0.0, -INF])).tolist() == [0] * 50
    assert decide_exits(conf, np.array([INF, INF, INF, -INF])).tolist() == [3] * 50


def test_last_threshold_is_ignored() -> None:
    conf = np.array([[0.1, 0.2]])
    assert decide_exits(conf, np.array([0.5, 0.99])).tolist() == [1]
    assert decide_exits(conf, np.array([0.5, INF])).tolist() == [1]


def test_per_image_caps() -> None:
    conf = np.array([[0.1, 0.2, 0.3, 0.4]] * 3)
    thr = np.array([0.5, 0.5, 0.5, -INF])
    caps = np.array([0, 2, 9])
    assert decide_exits(conf, thr, caps).tolist() == [0, 2, 3]
    # A confident image leaves before its cap.
    conf2 = np.array([[0.9, 0.9, 0.9, 0.9]])
    assert decide_exits(conf2, thr, np.array([2])).tolist() == [0]


def test_per_image_thresholds() -> None:
    conf = np.array([[0.6, 0.9], [0.6, 0.9]])
    thr = np.array([[0.5, -INF], [0.7, -INF]])
    assert decide_exits(conf, thr).tolist() == [0, 1]


def test_torch_and_numpy_agree_and_keep_their_kind() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(size=(100, 5)).astype(np.float32)
    thr = np.array([0.9, 0.8, 0.7, 0.6, -INF])
    caps = rng.integers(0, 5, size=100)
    a = decide_exits(conf, thr, caps)
    b = decide_exits(torch.from_numpy(conf), torch.from_numpy(thr), torch.from_numpy(caps))
    assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor)
    assert a.tolist() == b.tolist()


def test_stops_here_is_the_online_form() -> None:
    conf = torch.tensor([0.2, 0.9, 0.5])
    assert stops_here(conf, 0.5, 0, 3).tolist() == [False, True, True]
    assert stops_here(conf, INF, 2, 3).tolist() == [True, True, True]  # last exit
    caps = torch.tensor([1, 2, 2])
    assert stops_here(conf, INF, 1, 3, caps).tolist() == [True, False, False]
    with pytest.raises(ValueError):
        stops_here(conf, 0.5, 3, 3)


def test_bad_threshold_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="thresholds"):
        decide_exits(np.zeros((2, 3)), np.zeros(2))


def test_confidence_is_max_softmax() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    conf, pred = confidence_and_prediction(logits)
    expected = torch.softmax(logits.double(), dim=1).max(dim=1)
    assert conf.dtype == torch.float64
    torch.testing.assert_close(conf, expected.values)
    assert pred.tolist() == [0, 2]
    # Easy images keep distinct confidences instead of all rounding to 1.0.
    easy = torch.tensor([[20.0, 0.0], [21.0, 0.0]])
    c, _ = confidence_and_prediction(easy)
    assert c[0] < c[1] < 1.0


# Confidences on a coarse grid so that ties with thresholds are frequent.
_grid = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])


@st.composite
def _cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n = draw(st.integers(1, 30))
    k = draw(st.integers(1, 6))
    conf = draw(arrays(np.float64, (n, k), elements=_grid))
    per_image = draw(st.booleans())
    thr_elems = st.one_of(_grid, st.just(INF), st.just(-INF))
    thr = draw(arrays(np.float64, (n, k) if per_image else (k,), elements=thr_elems))
    cap = draw(st.none() | arrays(np.int64, (n,), elements=st.integers(0, k + 1)))
    return conf, thr, cap


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_matches_plain_loop(case: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> None:
    conf, thr, cap = case
    expected = reference(conf, thr, cap)
    assert decide_exits(conf, thr, cap).tolist() == expected
    as_torch = decide_exits(
        torch.from_numpy(conf),
        torch.from_numpy(thr),
        None if cap is None else torch.from_numpy(cap),
    )
    assert as_torch.tolist() == expected
