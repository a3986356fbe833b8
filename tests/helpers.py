"""Test helpers shared by the suites: small data sets in the standard formats and tiny bundles.

The fake Fashion-MNIST images are learnable (each class draws a bright bar at its own place
over noise), so a tiny network reaches high accuracy in a few hundred steps and confidences
spread over (0, 1) as they do for a real model.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from exitwise.bundle import Bundle, HeldOutSplit, indices_sha256, save_bundle
from exitwise.datasets import EvalImages, heldout_split, open_dataset, train_indices
from exitwise.datasets.readers import FASHION_MNIST_CLASSES
from exitwise.models import create_model
from exitwise.preprocess import FASHION_MNIST, normalize

TINY_KWARGS = {"channels": 4, "growth_rate": 2, "head_channels": 8}


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` as an idx file of unsigned bytes (``.gz`` appended when compressed)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_fashion_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images and labels; class c has a faint bar in rows 2c+3..2c+5.

    Noise, faint bars and 5 % wrong labels keep accuracy below 100 % and spread confidences.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 120, (n, 28, 28)).astype(np.int64)
    for i, c in enumerate(labels):
        row = 2 * int(c) + 3
        images[i, row : row + 3, 4:24] += rng.integers(25, 130)
    flip = rng.random(n) < 0.05
    labels[flip] = rng.integers(0, 10, int(flip.sum()))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_fashion_mnist(
    root: Path, n_train: int = 600, n_test: int = 200, gz: bool = True, seed: int = 0
) -> Path:
    """The four Fashion-MNIST idx files, with learnable fake images, in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = fake_fashion_images(n, s)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return root


def make_bundle(
    path: Path,
    data_root: Path,
    *,
    steps: int = 40,
    heldout_size: int = 200,
    seed: int = 0,
    name: str = "tiny",
) -> Bundle:
    """Train a tiny 4-exit MSDNet on the fake Fashion-MNIST in ``data_root`` and save a bundle.

    Plain SGD on the sum of exit losses (no augmentation): just enough for realistic,
    spread-out confidences. The held-out split is drawn and saved as training would.
    """
    torch.manual_seed(seed)
    train = open_dataset("fashion-mnist", "train", data_root)
    held = heldout_split(len(train), heldout_size, seed)
    view = EvalImages(train, FASHION_MNIST, train_indices(len(train), held))
    loader = torch.utils.data.DataLoader(view, batch_size=64, shuffle=True, drop_last=True)
    model = create_model("msdnet-fmnist", **TINY_KWARGS)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            logits = model(normalize(x, FASHION_MNIST))
            loss = sum(F.cross_entropy(out, y) for out in logits)
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            done += 1
            if done >= steps:
                break
    model.eval()
    split = HeldOutSplit(
        dataset="fashion-mnist", size=heldout_size, seed=seed, sha256=indices_sha256(held)
    )
    return save_bundle(
        path,
        model,
        name=name,
        class_names=FASHION_MNIST_CLASSES,
        preprocessing=FASHION_MNIST,
        preset="msdnet-fmnist",
        dataset="fashion-mnist",
        heldout=(split, held),
        training={"weighting": "uniform", "epochs": 0, "seed": seed, "steps": steps},
    )
