"""The image shifts of ``bench drift``: same shape and type, seeded, and really different."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.shifts import SHIFTS


@pytest.mark.parametrize("name", sorted(SHIFTS))
@pytest.mark.parametrize("channels", [1, 3])
def test_shift_keeps_shape_and_type_and_is_seeded(name: str, channels: int) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, channels, 28, 28), dtype=np.uint8)
    a = SHIFTS[name](pixels.copy(), np.random.default_rng(1))
    b = SHIFTS[name](pixels.copy(), np.random.default_rng(1))
    assert a.shape == pixels.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, pixels)


def test_digits_draw_something_on_black() -> None:
    out = SHIFTS["digits"](np.zeros((20, 1, 28, 28), np.uint8), np.random.default_rng(0))
    lit = (out > 64).reshape(20, -1).mean(axis=1)
    assert (lit > 0.02).all() and (lit < 0.6).all()
