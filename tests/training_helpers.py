"""Helpers for the training tests: tiny recipes, CIFAR-format and image-folder files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from exitwise.models import EarlyExitNet, create_model

from .helpers import TINY_KWARGS, write_fashion_mnist

REPO = Path(__file__).resolve().parents[1]


def tiny_model() -> EarlyExitNet:
    return create_model("msdnet-fmnist", **TINY_KWARGS)


def tiny_recipe(data_root: Path, **changes: Any) -> dict[str, Any]:
    """A recipe for the tiny MSDNet on the fake Fashion-MNIST in ``data_root``: seconds on a CPU."""
    recipe: dict[str, Any] = {
        "model": {"preset": "msdnet-fmnist", "kwargs": dict(TINY_KWARGS)},
        "data": {"dataset": "fashion-mnist", "root": str(data_root), "heldout_size": 100},
        "weighting": "l2w",
        "epochs": 1,
        "batch_size": 32,
        "optim": {"lr": 0.1},
        "meta": {"hidden_size": 16, "interval": 1},
        "seed": 0,
        "device": "cpu",
        "eval": {"batch_size": 200},
        "log": {"tensorboard": False, "progress": "none"},
    }
    for dotted, value in changes.items():
        node = recipe
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def fake_fmnist(root: Path, n_train: int = 420, n_test: int = 100) -> Path:
    return write_fashion_mnist(root, n_train=n_train, n_test=n_test)


def _cifar_batch(n: int, key: str, rng: np.random.Generator, classes: int) -> dict[str, object]:
    return {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        key: rng.integers(0, classes, n).tolist(),
        "filenames": [f"{i}.png" for i in range(n)],
    }


def write_cifar10(root: Path, per_batch: int = 8) -> Path:
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump(_cifar_batch(per_batch, "labels", rng, 10), f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


def write_image_folder(root: Path, per_class: int = 4, size: tuple[int, int] = (64, 48)) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(2):
            d = root / split / f"n0{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"img{i}.png")
    return root


def run_cli(
    args: list[str], cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m cli ARGS`` in a fresh process (the repository on the path).

    One intra-op thread: on a shared 2-core machine, two OpenMP threads competing with other
    processes spin-wait and can run ten times slower.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread for the training tests (import this fixture into a test module).

    Their networks are tiny, so a second thread buys little, and on a 2-core machine shared with
    other test processes two spin-waiting OpenMP threads can run ten times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
