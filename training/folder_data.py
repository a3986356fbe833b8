"""Training on your own images (``data.dataset: folder``): decode once, normalise, report.

The folder is scanned by :mod:`exitwise.datasets.folder` (class folders, test split, unreadable
files skipped and counted). Training then decodes every image once, through the evaluation
geometry the server uses (``to_uint8``: shorter side resized to ``image_size``, centre crop), and
keeps the result in memory as an ``ArrayDataset``: from there it is trained on like CIFAR (random
crops of the image padded by an eighth of its size, horizontal flips, on the training device), and
its held-out and test accuracy are measured on exactly the pixels calibration and the server
compute from the files. Decoding also finds damaged files before the first step (refused, named).

``image_size`` is the recipe's, or (``auto``, the default) measured from the folder's training
images by :func:`auto_image_size`. ``mean`` and ``std`` are the recipe's, or computed once on the
training images (held-out images excluded). Both are stored in the bundle's preprocessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from exitwise.datasets import FOLDER, MIN_HELDOUT_PER_EXIT, FolderSource, default_preprocessing
from exitwise.datasets.folder import (
    EXTENSIONS,
    LARGE_FACTOR,
    Entry,
    FolderImages,
    FolderScan,
    scan_folder,
)
from exitwise.datasets.readers import ArrayDataset, InvalidDatasetError
from exitwise.errors import ExitwiseError
from exitwise.preprocess import Preprocessing, to_uint8

from .config import DataSpec

TYPICAL_Q = 0.75  # the exit distribution used to size that warning (q^k, the meta target's q)
_SHOWN = 5
# data.image_size auto: the median shorter side, clamped to these and rounded down to a multiple
# of AUTO_STEP (so the median image is never enlarged, and the network's maps halve evenly).
AUTO_MIN, AUTO_MAX, AUTO_STEP = 32, 224, 8


def auto_image_size(entries: list[Entry]) -> tuple[int, int]:
    """The input size for images of these sizes, and the median shorter side it comes from.

    The median (the lower one for an even count: a size some image has) of the images' shorter
    sides, clamped to ``AUTO_MIN``-``AUTO_MAX`` pixels and rounded down to a multiple of
    ``AUTO_STEP``: 64-pixel photos give 64, 100-pixel ones 96, 28-pixel ones 32, 4000x3000
    photos 224."""
    if not entries:
        raise InvalidDatasetError("no training images to measure data.image_size on")
    sides = sorted(min(e.size) for e in entries)
    median = sides[(len(sides) - 1) // 2]
    size = min(max(median, AUTO_MIN), AUTO_MAX) // AUTO_STEP * AUTO_STEP
    return size, median


def image_size(spec: DataSpec, scan: FolderScan | None = None) -> int:
    """A folder's input size: the recipe's number, or measured from its training images (the
    folder is scanned, headers only, when no ``scan`` is given)."""
    if spec.fixed_image_size is not None:
        return spec.fixed_image_size
    if scan is None:
        scan = scan_folder(spec.root, test_fraction=spec.folder_test_fraction,
                           split_seed=spec.split_seed)  # fmt: skip
    return auto_image_size(scan.train)[0]


def size_note(spec: DataSpec, scan: FolderScan, preset: str = "PRESET") -> str | None:
    """What the automatic size is and where it comes from (nothing for a size the recipe gives)."""
    if spec.fixed_image_size is not None:
        return None
    size, median = auto_image_size(scan.train)
    steps = []
    if not AUTO_MIN <= median <= AUTO_MAX:
        steps.append(f"clamped to {AUTO_MIN}-{AUTO_MAX}")
    if min(max(median, AUTO_MIN), AUTO_MAX) != size:
        steps.append(f"rounded down to a multiple of {AUTO_STEP}")
    how = f", {' and '.join(steps)}" if steps else ""
    return (
        f"image size {size} (data.image_size auto: the median shorter side of the "
        f"{len(scan.train)} training images is {median} pixels{how}); --set data.image_size=N "
        f"to choose, and `exitwise inspect {preset} --image-size N` shows what it costs"
    )


def input_preprocessing(spec: DataSpec, size: int | None = None) -> Preprocessing:
    """The data set's preprocessing; a folder's at ``size`` pixels (default: :func:`image_size`)
    with the recipe's mean/std (or placeholders until they are computed: the geometry is all
    decoding needs)."""
    if spec.dataset != FOLDER:
        return default_preprocessing(spec.dataset, spec.channels)
    size = image_size(spec) if size is None else size
    channels = spec.folder_channels
    return Preprocessing(
        input_size=size,
        channels=channels,  # type: ignore[arg-type]
        resize=size,
        crop=size,
        mean=tuple(spec.mean) if spec.mean else (0.5,) * channels,
        std=tuple(spec.std) if spec.std else (0.25,) * channels,
    )


@dataclass
class FolderData:
    scan: FolderScan
    geometry: Preprocessing  # the input size and channels (mean/std not computed yet)
    train: ArrayDataset
    test: ArrayDataset | None
    notes: list[str] = field(default_factory=list)  # what the user should read before training

    @property
    def source(self) -> FolderSource:
        return self.scan.source()


class _Decode(torch.utils.data.Dataset[tuple[torch.Tensor, str]]):
    """Pixels in the evaluation geometry, or the error that stopped them (reported in order)."""

    def __init__(self, images: FolderImages, spec: Preprocessing) -> None:
        self.images, self.spec = images, spec

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return torch.from_numpy(to_uint8(self.images.image(index), self.spec)), ""
        except ExitwiseError as err:
            empty = torch.zeros(
                self.spec.channels, self.spec.crop, self.spec.crop, dtype=torch.uint8
            )
            return empty, str(err)


def decode(images: FolderImages, spec: Preprocessing, workers: int) -> ArrayDataset:
    """Every image of ``images`` in the evaluation geometry, as an in-memory data set."""
    n = len(images)
    out = np.empty((n, spec.crop, spec.crop, spec.channels), dtype=np.uint8)
    loader = torch.utils.data.DataLoader(
        _Decode(images, spec),
        batch_size=256,
        num_workers=workers if n >= 2000 else 0,  # processes cost more than a few images
        generator=torch.Generator(),  # leaves the global RNG (model initialisation) alone
    )
    errors: list[str] = []
    done = 0
    for pixels, messages in loader:
        out[done : done + len(pixels)] = pixels.permute(0, 2, 3, 1).numpy()
        done += len(pixels)
        errors += [m for m in messages if m]
    if errors:
        more = f" (and {len(errors) - 1} more damaged files)" if len(errors) > 1 else ""
        raise InvalidDatasetError(errors[0] + more)
    pixels_out = out[..., 0] if spec.channels == 1 else out
    return ArrayDataset(FOLDER, images.split, pixels_out, images.labels, images.class_names)


def channel_stats(dataset: ArrayDataset, indices: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x / 255`` over the images ``indices`` (float64 sums)."""
    images = dataset.images
    channels = 1 if images.ndim == 3 else images.shape[3]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for start in range(0, len(indices), 1024):
        x = images[indices[start : start + 1024]].astype(np.float64) / 255.0
        x = x.reshape(-1, channels)
        total += x.sum(0)
        squares += (x * x).sum(0)
        count += x.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def folder_preprocessing(
    spec: DataSpec, geometry: Preprocessing, train: ArrayDataset, indices: np.ndarray
) -> Preprocessing:
    """The bundle's preprocessing: the ``geometry`` decoded, mean and std given or computed."""
    base = geometry
    if spec.mean is not None and spec.std is not None:
        return base
    mean, std = channel_stats(train, indices)
    if min(std) < 1e-3:
        raise InvalidDatasetError(
            f"{spec.root}: the training images have no contrast (std {std}); nothing to learn"
        )
    return Preprocessing(**{**base.model_dump(), "mean": tuple(mean), "std": tuple(std)})


def open_folder(spec: DataSpec, *, with_test: bool, preset: str = "PRESET") -> FolderData:
    """Scan, check the memory it will take, decode; the notes say what was found."""
    scan = scan_folder(spec.root, test_fraction=spec.folder_test_fraction,
                       split_seed=spec.split_seed)  # fmt: skip
    geometry = input_preprocessing(spec, image_size(spec, scan))
    n = len(scan.train) + (len(scan.test) if with_test else 0)
    need = n * geometry.channels * geometry.crop**2 / 1e9
    if need > spec.max_memory_gb:
        raise ExitwiseError(
            f"{spec.root}: {n} images at {geometry.channels}x{geometry.crop}x{geometry.crop} "
            f"take {need:.1f} GB decoded, over data.max_memory_gb = {spec.max_memory_gb:g} "
            "(raise it, or lower data.image_size)"
        )
    train = decode(FolderImages(scan, "train"), geometry, spec.workers)
    test = decode(FolderImages(scan, "test"), geometry, spec.workers) if with_test else None
    notes = scan_notes(scan, geometry.crop)
    size = size_note(spec, scan, preset)
    notes[1:1] = [size] if size else []  # after the line that counts the images
    return FolderData(scan, geometry, train, test, notes)


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def scan_notes(scan: FolderScan, crop: int) -> list[str]:
    """Class balance, files left out, very large images: one line each."""
    notes = []
    counts = scan.class_counts("train")
    test_from = "val/" if scan.test_split == "val" else f"a {scan.test_fraction:g} share of train/"
    notes.append(
        f"folder {scan.root}: {len(scan.classes)} classes, {len(scan.train)} training images "
        f"(the held-out split is drawn from them), {len(scan.test)} test images ({test_from})"
    )
    lo, hi = int(np.argmin(counts)), int(np.argmax(counts))
    notes.append(
        f"class balance (training images): {counts[lo]} ({scan.classes[lo]!r}) to {counts[hi]} "
        f"({scan.classes[hi]!r}) per class"
    )
    if counts[hi] > 3 * counts[lo]:
        notes.append(
            f"warning: classes are imbalanced ({counts[hi] / counts[lo]:.1f}x); accuracy and "
            "confidence will favour the large classes"
        )
    if scan.skipped:
        listed = [f"{path} ({why})" for path, why in scan.skipped]
        notes.append(f"skipped {len(scan.skipped)} unreadable file(s): {_names(listed)}")
    if scan.ignored:
        extensions = " ".join(sorted(EXTENSIONS))
        notes.append(
            f"ignored {len(scan.ignored)} file(s) outside class folders or without an image "
            f"extension ({extensions}): {_names(scan.ignored)}"
        )
    large = scan.large_images(crop)
    if large:
        w, h = max((e.size for e in large), key=lambda s: s[0] * s[1])
        notes.append(
            f"{len(large)} image(s) are more than {LARGE_FACTOR}x the {crop}-pixel crop on their "
            f"shorter side (largest {w}x{h}): decoding them dominates data loading here and in "
            "the server; smaller copies decode faster"
        )
    return notes


def heldout_note(size: int, num_exits: int) -> str | None:
    """A warning when the held-out split is too small to calibrate typical budgets."""
    if num_exits < 2:
        return None
    weights = [TYPICAL_Q**k for k in range(1, num_exits + 1)]
    shares = [w / sum(weights) for w in weights[:-1]]  # the last exit takes the rest
    counts = [math.floor(size * p) for p in shares]
    if min(counts) >= MIN_HELDOUT_PER_EXIT:
        return None
    needed = math.ceil(MIN_HELDOUT_PER_EXIT / min(shares))
    return (
        f"warning: held-out split of {size} images: calibration fits each early exit's threshold "
        f"on its share (at q = {TYPICAL_Q}: {', '.join(map(str, counts))} images at exits "
        f"1-{num_exits - 1}); {MIN_HELDOUT_PER_EXIT} per exit needs about {needed} held-out images "
        "(data.heldout_fraction, data.heldout_min or data.heldout_size)"
    )
