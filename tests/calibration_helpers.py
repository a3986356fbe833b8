"""Helpers for the calibration tests: untrained bundles for refusals, a staged "server" run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from exitwise.bundle import Bundle, HeldOutSplit, indices_sha256, save_bundle
from exitwise.datasets import EvalImages, open_dataset
from exitwise.datasets.readers import FASHION_MNIST_CLASSES
from exitwise.models import create_model, select_rows
from exitwise.policy import confidence_and_prediction, stops_here
from exitwise.preprocess import FASHION_MNIST, normalize
from tests.helpers import TINY_KWARGS


def untrained_bundle(
    path: Path,
    *,
    heldout: bool = True,
    class_names: list[str] | None = None,
    num_classes: int = 10,
    n_train: int = 600,
    name: str = "untrained",
) -> Bundle:
    """A tiny bundle with random weights (enough for everything but accuracy)."""
    torch.manual_seed(1)
    model = create_model("msdnet-fmnist", num_classes=num_classes, **TINY_KWARGS)
    split = None
    if heldout:
        idx = np.arange(n_train - 100, n_train, dtype=np.int64)
        info = HeldOutSplit(dataset="fashion-mnist", size=100, seed=0, sha256=indices_sha256(idx))
        split = (info, idx)
    return save_bundle(
        path,
        model,
        name=name,
        class_names=class_names or FASHION_MNIST_CLASSES[:num_classes],
        preprocessing=FASHION_MNIST,
        preset="msdnet-fmnist",
        dataset="fashion-mnist",
        heldout=split,
    )


def staged_exits(
    bundle: Bundle, data_root: Path, thresholds: np.ndarray, batch_size: int
) -> np.ndarray:
    """Exit index of every held-out image when the network runs as the server runs it: batch
    by batch, stage by stage, dropping the rows of images that left, deciding with stops_here."""
    model = bundle.load_model()
    train = open_dataset("fashion-mnist", "train", data_root)
    view = EvalImages(train, FASHION_MNIST, bundle.heldout_indices())
    k = model.num_exits
    out = np.full(len(view), -1, dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(view), batch_size):
            ids = list(range(start, min(start + batch_size, len(view))))
            pixels = torch.stack([view[i][0] for i in ids])
            state = model.initial_state(normalize(pixels, FASHION_MNIST))
            alive = torch.tensor(ids)
            for index in range(k):
                state, logits = model.run_stage(index, state)
                conf, _ = confidence_and_prediction(logits)
                stop = stops_here(conf, float(thresholds[index]), index, k)
                out[alive[stop].numpy()] = index
                keep = torch.nonzero(~stop).flatten()
                alive = alive[keep]
                if len(alive) == 0:
                    break
                state = select_rows(state, keep)
    return out
