"""The held-out and test splits of a bundle's data set, checked against the bundle.

Each split comes with a fingerprint that changes whenever the images or labels change (the
pixels of in-memory data sets, the path, size and modification time of image files), so a cache
of the network's outputs can be tied to the exact data it was computed from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exitwise.bundle import Bundle
from exitwise.datasets import EvalImages, ImageDataset, open_dataset
from exitwise.preprocess import Preprocessing

from .errors import CalibrationError, DataMismatchError


@dataclass(frozen=True)
class SplitData:
    """One split to score: the images, where they come from, and their fingerprint."""

    name: str  # "heldout" or "test"
    dataset: str
    source_split: str  # "train" or "test"
    view: EvalImages
    indices_sha256: str | None  # the held-out split's, from the manifest
    fingerprint: str

    @property
    def images(self) -> int:
        return len(self.view)


def dataset_name(bundle: Bundle) -> str:
    m = bundle.manifest
    name = m.dataset or (m.heldout.dataset if m.heldout else None)
    if name is None:
        raise CalibrationError(f"{bundle.path}: the manifest does not name the bundle's data set")
    return name


def check_dataset(bundle: Bundle, ds: ImageDataset) -> None:
    """Refuse a data set whose classes or image geometry differ from the bundle's."""
    m = bundle.manifest
    where = f"{ds.name} {ds.split}"
    if len(ds.class_names) != m.num_classes:
        raise DataMismatchError(
            f"{where} has {len(ds.class_names)} classes but the bundle {m.name!r} was trained on "
            f"{m.num_classes}"
        )
    if list(ds.class_names) != list(m.class_names):
        diff = next(
            i for i, (a, b) in enumerate(zip(ds.class_names, m.class_names, strict=True)) if a != b
        )
        raise DataMismatchError(
            f"{where}: class {diff} is {ds.class_names[diff]!r} but the bundle calls it "
            f"{m.class_names[diff]!r}"
        )
    labels = np.asarray(ds.labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= m.num_classes):
        raise DataMismatchError(f"{where}: labels outside 0..{m.num_classes - 1}")
    _check_geometry(where, ds, m.preprocessing)


def _check_geometry(where: str, ds: ImageDataset, spec: Preprocessing) -> None:
    # Image files come in every size and are resized by design; an in-memory data set has one
    # native size, and it must be the one the bundle's preprocessing was written for.
    images = getattr(ds, "images", None)
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
        return
    h, w = images.shape[1:3]
    channels = 1 if images.ndim == 3 else images.shape[3]
    expected = spec.resize if spec.resize is not None else spec.crop
    fits = min(h, w) == expected if spec.resize is not None else min(h, w) >= spec.crop
    grey_as_colour = channels == 1 and spec.channels == 3  # e.g. Fashion-MNIST, data.channels: 3
    if (channels != spec.channels and not grey_as_colour) or not fits:
        raise DataMismatchError(
            f"{where}: images are {channels}x{h}x{w} but the bundle expects {spec.channels} "
            f"channel(s) with a shorter side of {expected} (input {spec.input_size}x"
            f"{spec.input_size})"
        )


def fingerprint(ds: ImageDataset, indices: np.ndarray | None) -> str:
    """sha256 of what identifies the images (and labels) ``indices`` select from ``ds``."""
    h = hashlib.sha256()
    h.update(f"{ds.name}\0{ds.split}\0{len(ds)}\0".encode())
    sel = np.arange(len(ds)) if indices is None else np.asarray(indices, dtype=np.int64)
    h.update(np.asarray(ds.labels)[sel].astype("<i8").tobytes())
    images = getattr(ds, "images", None)
    files = getattr(ds, "files", None)
    if isinstance(images, np.ndarray):
        h.update(str(images.shape[1:]).encode())
        h.update(np.ascontiguousarray(images[sel]).tobytes())
    elif isinstance(files, list):
        for i in sel:
            path = Path(files[int(i)])
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:  # an unknown reader: hash the decoded pixels (slow, but never wrong)
        for i in sel:
            h.update(np.asarray(ds.image(int(i))).tobytes())
    return h.hexdigest()


def open_splits(bundle: Bundle, data_root: str | os.PathLike[str] | None) -> list[SplitData]:
    """The held-out split (from the bundle's indices) and the data set's test split."""
    m = bundle.manifest
    if m.heldout is None:
        raise CalibrationError(
            f"{bundle.path}: the bundle has no held-out split; thresholds fitted on training "
            "images would be biased (train with a held-out split)"
        )
    name = dataset_name(bundle)
    if m.heldout.dataset != name:
        raise CalibrationError(
            f"{bundle.path}: the held-out split is from {m.heldout.dataset!r} but the bundle's "
            f"data set is {name!r}"
        )
    if m.heldout.source_split not in ("train", "test"):
        raise CalibrationError(
            f"{bundle.path}: the held-out split points into an unknown split "
            f"{m.heldout.source_split!r} (expected 'train')"
        )
    indices = bundle.heldout_indices()
    # A folder data set comes back from the bundle's record: its place and split, checked.
    source = open_dataset(name, m.heldout.source_split, data_root, source=m.folder)
    check_dataset(bundle, source)
    if len(indices) and int(indices.max()) >= len(source):
        raise DataMismatchError(
            f"{name} {m.heldout.source_split} has {len(source)} images but the held-out split "
            f"indexes image {int(indices.max())} (is --data-root the data set the bundle was "
            "trained on?)"
        )
    test = open_dataset(name, "test", data_root, source=m.folder)
    check_dataset(bundle, test)
    return [
        SplitData(
            name="heldout",
            dataset=name,
            source_split=m.heldout.source_split,
            view=EvalImages(source, m.preprocessing, indices),
            indices_sha256=m.heldout.sha256,
            fingerprint=fingerprint(source, indices),
        ),
        SplitData(
            name="test",
            dataset=name,
            source_split="test",
            view=EvalImages(test, m.preprocessing),
            indices_sha256=None,
            fingerprint=fingerprint(test, None),
        ),
    ]
