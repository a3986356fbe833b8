"""The server's default torch thread count leaves cores for the event loop and decoding."""

from __future__ import annotations

import pytest

from serving.threads import default_torch_threads


@pytest.mark.parametrize(
    ("cores", "workers", "expected"),
    [(1, 1, 1), (2, 1, 1), (8, 1, 4), (8, 2, 2), (8, 8, 1), (16, 3, 2)],
)
def test_default_torch_threads(cores: int, workers: int, expected: int) -> None:
    assert default_torch_threads(workers, cores=cores) == expected
