"""Readers for the data sets exitwise knows, from their standard on-disk formats. Nothing downloads.

- Fashion-MNIST: the four idx files (gzipped or not).
- CIFAR-10 / CIFAR-100: the "python version" directories (``cifar-10-batches-py``,
  ``cifar-100-python``), read through torchvision (the one pickle-based format we accept, since
  it is the data set's own).
- ImageNet-style trees: ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG``.

Every reader gives images as decoded pixels (uint8 arrays or PIL images) plus integer labels;
turning them into network input is :mod:`exitwise.preprocess`' job.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from ..errors import ExitwiseError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
LOCAL_FASHION_MNIST = Path("data/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


class DatasetNotFoundError(ExitwiseError):
    """A data set that is not where we looked (the message says where and how to get it)."""


class InvalidDatasetError(ExitwiseError):
    """Data set files that exist but cannot be read."""


class ImageDataset(Protocol):
    """What every reader provides."""

    name: str
    split: str
    class_names: list[str]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray | Image.Image: ...


class ArrayDataset:
    """An in-memory data set: ``images`` is ``[N, H, W]`` or ``[N, H, W, C]`` uint8."""

    def __init__(
        self, name: str, split: str, images: np.ndarray, labels: np.ndarray, class_names: list[str]
    ) -> None:
        if len(images) != len(labels):
            raise InvalidDatasetError(f"{name} {split}: {len(images)} images, {len(labels)} labels")
        if len(images) == 0:
            raise InvalidDatasetError(f"{name} {split}: the data set is empty")
        self.name = name
        self.split = split
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        img: np.ndarray = self.images[index]
        return img


# --- Fashion-MNIST ------------------------------------------------------------------------------

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (``.gz`` or plain): magic 0x0000 / type 0x08 (uint8) / ndim, big-endian dims."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise InvalidDatasetError(f"{path}: cannot be read ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InvalidDatasetError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InvalidDatasetError(f"{path}: truncated idx header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - header != expected:
        raise InvalidDatasetError(
            f"{path}: {len(data) - header} bytes of data, the header announces {expected}"
        )
    out: np.ndarray = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    return out


def _find_idx(directory: Path, stem: str) -> Path | None:
    for sub in ("", "FashionMNIST/raw", "raw"):
        for suffix in ("", ".gz"):
            path = directory / sub / (stem + suffix)
            if path.is_file():
                return path
    return None


def fashion_mnist_roots(root: str | os.PathLike[str] | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    return [LOCAL_FASHION_MNIST, DEBIAN_FASHION_MNIST]


def read_fashion_mnist(split: str, root: str | os.PathLike[str] | None = None) -> ArrayDataset:
    images_stem, labels_stem = _IDX_FILES[split]
    roots = fashion_mnist_roots(root)
    for directory in roots:
        images_path = _find_idx(directory, images_stem)
        labels_path = _find_idx(directory, labels_stem)
        if images_path and labels_path:
            images, labels = read_idx(images_path), read_idx(labels_path)
            if images.ndim != 3 or labels.ndim != 1:
                raise InvalidDatasetError(f"{images_path}: expected N x H x W images")
            return ArrayDataset(
                "fashion-mnist", split, images, labels.astype(np.int64), FASHION_MNIST_CLASSES
            )
    looked = ", ".join(str(d) for d in roots)
    raise DatasetNotFoundError(
        f"Fashion-MNIST {split} files ({images_stem}[.gz]) not found in {looked}; install "
        "Debian's package (apt-get install dataset-fashion-mnist), run "
        "scripts/get-fashion-mnist.sh, or pass --data-root DIR holding the four idx files"
    )


# --- CIFAR ------------------------------------------------------------------------------------

_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def read_cifar(name: str, split: str, root: str | os.PathLike[str] | None) -> ArrayDataset:
    if root is None:
        raise DatasetNotFoundError(
            f"{name}: pass --data-root DIR, the directory holding {_CIFAR_DIRS[name]}/ "
            "(the python version from https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    base = Path(root)
    if not (base / _CIFAR_DIRS[name]).is_dir() and base.name == _CIFAR_DIRS[name]:
        base = base.parent  # accept the data directory itself as well as its parent
    if not (base / _CIFAR_DIRS[name]).is_dir():
        raise DatasetNotFoundError(
            f"{name}: {base / _CIFAR_DIRS[name]} not found; download and unpack the python "
            "version from https://www.cs.toronto.edu/~kriz/cifar.html into "
            f"{base} (nothing is downloaded at run time)"
        )
    try:
        from torchvision.datasets import CIFAR10, CIFAR100
    except ImportError as err:  # pragma: no cover - torchvision comes with the train extra
        raise ExitwiseError(
            "reading CIFAR needs torchvision: pip install 'exitwise[train]'"
        ) from err
    parent: Any = CIFAR10 if name == "cifar10" else CIFAR100

    class _Reader(parent):  # type: ignore[misc, valid-type]
        # torchvision checks the md5 sums of the official files; without a sum it only checks
        # that a file exists, so well-formed files of any content (the tests write small ones)
        # are read.
        train_list: ClassVar[list[list[str | None]]] = [[f, None] for f, _ in parent.train_list]
        test_list: ClassVar[list[list[str | None]]] = [[f, None] for f, _ in parent.test_list]
        meta: ClassVar[dict[str, str | None]] = {**parent.meta, "md5": None}

    try:
        ds = _Reader(str(base), train=split == "train", download=False)
    except (RuntimeError, OSError, KeyError, ValueError, EOFError) as err:
        raise InvalidDatasetError(
            f"{base / _CIFAR_DIRS[name]}: cannot read {split}: {err}"
        ) from err
    images = np.asarray(ds.data, dtype=np.uint8)
    return ArrayDataset(name, split, images, np.asarray(ds.targets), list(ds.classes))


# --- ImageNet-style folders -------------------------------------------------------------------

_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


class FolderDataset:
    """``ROOT/<split>/<class>/<image>``: class names are the sorted folder names."""

    def __init__(self, name: str, split: str, files: Sequence[Path], labels: np.ndarray,
                 class_names: list[str]) -> None:  # fmt: skip
        if not files:
            raise InvalidDatasetError(f"{name} {split}: no images found")
        self.name = name
        self.split = split
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> Image.Image:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                rgb: Image.Image = img.convert("RGB")
                return rgb
        except OSError as err:
            raise InvalidDatasetError(f"{path}: cannot decode image ({err})") from err


def read_image_folder(
    split: str, root: str | os.PathLike[str] | None, name: str = "imagenet"
) -> FolderDataset:
    folder = {"train": "train", "test": "val"}[split]
    if root is None:
        raise DatasetNotFoundError(
            f"{name}: pass --data-root DIR, the directory holding train/ and val/ "
            "(one sub-directory of images per class)"
        )
    directory = Path(root) / folder
    if not directory.is_dir():
        raise DatasetNotFoundError(
            f"{name}: {directory} not found; expected {root}/train/<class>/* and "
            f"{root}/val/<class>/* (ImageNet: the val images sorted into class folders)"
        )
    classes = sorted(d.name for d in directory.iterdir() if d.is_dir())
    if not classes:
        raise InvalidDatasetError(f"{directory}: no class sub-directories")
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        for path in sorted((directory / cls).rglob("*")):
            if path.suffix.lower() in _IMAGE_EXTENSIONS and path.is_file():
                files.append(path)
                labels.append(label)
    return FolderDataset(name, split, files, np.asarray(labels), classes)
