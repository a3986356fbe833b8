"""Shared test configuration: folder-based markers, CUDA skipping, and a lock for the tests that
need the machine to themselves."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_FOLDER_MARKS = {"unit", "integration", "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        parts = set(Path(str(item.fspath)).parts)
        for mark in _FOLDER_MARKS & parts:
            item.add_marker(getattr(pytest.mark, mark))
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    # Two-core CI machines: keep intra-op threads at 2 so timings and results are stable; under
    # pytest-xdist the workers share the cores (threads spinning against each other are slower).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // workers))


@pytest.fixture
def cpu_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For the tests whose figures a flood on the other core would spoil, and the floods: one
    such test at a time across pytest-xdist's workers (a file lock in the run's shared temporary
    folder). The seam test of the learned margin ran beside the degradation flood once files
    were added and the workers' share of them changed, and failed three runs in a row."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # each worker's base is a folder of the run's
    with open(shared / "cpu-alone.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
