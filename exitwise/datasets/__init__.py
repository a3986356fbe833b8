"""Data sets by name, the held-out split, and the evaluation view shared by training,
calibration and serving tests.

``open_dataset(name, split, root)`` returns a reader (see :mod:`.readers`, and :mod:`.folder` for
your own images, ``folder``, whose preprocessing comes from the recipe); ``heldout_split``
draws the deterministic held-out subset of the training split; ``EvalImages`` yields exactly the
uint8 pixels that :func:`exitwise.preprocess.normalize` turns into network input, the same path
the server takes for an uploaded image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ExitwiseError
from ..preprocess import CIFAR10, CIFAR100, FASHION_MNIST, IMAGENET, Preprocessing, to_uint8
from .folder import FOLDER, FolderSource, read_folder
from .readers import (
    DatasetNotFoundError,
    ImageDataset,
    InvalidDatasetError,
    read_cifar,
    read_fashion_mnist,
    read_idx,
    read_image_folder,
)

DATASETS: dict[str, Preprocessing] = {
    "fashion-mnist": FASHION_MNIST,
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
    "imagenet": IMAGENET,
}

# Every name open_dataset knows: the above, plus image folders, sized and normalised by the recipe.
NAMES = (*DATASETS, FOLDER)

# Held-out images an exit's threshold should rest on: the threshold is an order statistic of
# the confidences of the images that exit there, and with fewer it moves with every image.
MIN_HELDOUT_PER_EXIT = 20

# Held-out sizes by default: 5,000 for the 32x32 sets, 50,000 for ImageNet (as MSDNet's paper).
DEFAULT_HELDOUT = {"fashion-mnist": 5000, "cifar10": 5000, "cifar100": 5000, "imagenet": 50000}


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ExitwiseError(f"unknown data set {name!r}; known: {', '.join(sorted(NAMES))}")


def open_dataset(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    *,
    source: FolderSource | None = None,
) -> ImageDataset:
    """The ``split`` ("train" or "test") of data set ``name`` from ``root`` (or its default).

    ``source``: a ``folder`` data set's record from a bundle's manifest (``manifest.folder``):
    the same split, by default from the same place, and checked to be the same images.
    """
    _check_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if name == FOLDER:
        return read_folder(split, root, source)
    if name == "fashion-mnist":
        return read_fashion_mnist(split, root)
    if name in ("cifar10", "cifar100"):
        return read_cifar(name, split, root)
    return read_image_folder(split, root, name)


# Named data sets that may also be read with another channel count (``data.channels``).
CHANNEL_OPTIONS: dict[str, tuple[int, ...]] = {"fashion-mnist": (1, 3)}


def default_preprocessing(name: str, channels: int | None = None) -> Preprocessing:
    """The fixed preprocessing of a named data set; ``channels=3`` on a grey one (Fashion-MNIST)
    gives colour input for the 3-channel architectures (the CIFAR presets): the grey channel
    replicated, and its mean and std with it, so the three channels are identical and normalised
    exactly as the one was. The geometry is unchanged (Fashion-MNIST: 28 pixels, zero-padded 2
    on every side to 32)."""
    _check_name(name)
    if name not in DATASETS:
        raise ExitwiseError(
            f"{name}: no fixed preprocessing; it comes from the recipe (data.image_size, "
            "data.channels, data.mean, data.std) and is stored in the bundle"
        )
    spec = DATASETS[name]
    if channels is None or channels == spec.channels:
        return spec
    if channels not in CHANNEL_OPTIONS.get(name, ()):
        raise ExitwiseError(f"{name} is read with {spec.channels} channels, not {channels}")
    # Only grey -> colour is offered: replicating one channel loses nothing and adds nothing.
    return Preprocessing(
        **{
            **spec.model_dump(),
            "channels": channels,
            "mean": spec.mean * channels,
            "std": spec.std * channels,
        }
    )


def heldout_split(n_train: int, size: int, seed: int) -> np.ndarray:
    """Indices of the held-out images: the last ``size`` entries of a seeded permutation of the
    training split (MSDNet's recipe), so the rest of the permutation is what training uses."""
    if not 0 < size < n_train:
        raise ExitwiseError(
            f"held-out size {size} must be between 1 and {n_train - 1} (the training split has "
            f"{n_train} images)"
        )
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_train, generator=generator).numpy()
    return perm[n_train - size :].astype(np.int64)


def train_indices(n_train: int, heldout: np.ndarray) -> np.ndarray:
    """The training split minus the held-out images, in ascending order."""
    mask = np.ones(n_train, dtype=bool)
    mask[heldout] = False
    return np.flatnonzero(mask).astype(np.int64)


class EvalImages(Dataset[tuple[torch.Tensor, int]]):
    """Un-augmented images of ``dataset`` (optionally a subset) as ``C x crop x crop`` uint8.

    Collate a batch and call :func:`exitwise.preprocess.normalize` on it to get network input.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        preprocessing: Preprocessing,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.dataset = dataset
        self.preprocessing = preprocessing
        self.indices = (
            np.arange(len(dataset), dtype=np.int64)
            if indices is None
            else np.asarray(indices, dtype=np.int64)
        )
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(dataset)):
            raise InvalidDatasetError(
                f"{dataset.name} {dataset.split}: split indices out of range for "
                f"{len(dataset)} images (does the bundle belong to another data set?)"
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        pixels = to_uint8(self.dataset.image(j), self.preprocessing)
        return torch.from_numpy(pixels), int(self.dataset.labels[j])

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels[self.indices]


__all__ = [
    "CHANNEL_OPTIONS",
    "DATASETS",
    "DEFAULT_HELDOUT",
    "FOLDER",
    "MIN_HELDOUT_PER_EXIT",
    "NAMES",
    "DatasetNotFoundError",
    "EvalImages",
    "FolderSource",
    "ImageDataset",
    "InvalidDatasetError",
    "default_preprocessing",
    "heldout_split",
    "open_dataset",
    "read_idx",
    "train_indices",
]
