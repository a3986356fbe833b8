"""Your own images: ``ROOT/train/<class>/*`` and optionally ``ROOT/val/<class>/*`` (``folder``).

Class names are the sorted sub-folder names of ``train/``. Images are PNG, JPEG, WebP, BMP or
TIFF, grayscale or colour, any size; sub-folders of a class folder are searched too.

- **The test split** is ``val/`` when it exists (it must hold the same class folders), otherwise
  the images of ``train/`` whose hash of ``(split_seed, relative path)`` falls below
  ``test_fraction``: a file's side never depends on the other files, so adding images to the
  folder moves none of the ones already there. (The held-out split for calibration is drawn later,
  from the training side, by :func:`exitwise.datasets.heldout_split`.)
- **Bad files are skipped and counted**: a file with an image extension that cannot be opened as
  an image (empty, not an image, an unknown format) is left out and listed in the scan's
  ``skipped``; files with other extensions, or beside the class folders, are ignored and
  counted. A file that opens but whose
  pixel data is damaged is found when it is decoded and refused, naming the file (training
  decodes every image before its first step).
- **Refused, one line each**: a missing ``train/``, no class folders, an empty class folder, a
  single class, ``val/`` with other classes than ``train/``, an empty test split.

Images are decoded by :func:`exitwise.preprocess.decode_image`, the server's own function, and
returned unconverted, so :func:`exitwise.preprocess.to_uint8` sees exactly what it sees for an
upload. A :class:`FolderSource` (stored in the bundle's manifest) records the options and a digest
of each split's file list, so a later reader finds the same images, or says that they changed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from ..preprocess import ImageTooLargeError, InvalidImageError, decode_image
from .readers import DatasetNotFoundError, InvalidDatasetError

FOLDER = "folder"
EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
DEFAULT_TEST_FRACTION = 0.1
# Shorter sides beyond this many times the crop are reported: decoding them dominates the time.
LARGE_FACTOR = 8
_SHOWN = 5  # file names quoted in a message


class FolderSource(BaseModel):
    """Where a ``folder`` data set was read from and how it was split (in the bundle's manifest).

    Paths in the digests are relative to the split's directory, so the folder may move
    (``--data-root``); the digests change when a file is added, removed, renamed or resized.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str  # absolute, at training time
    test_split: Literal["val", "train"]  # test images from val/, or a hashed share of train/
    test_fraction: float = Field(gt=0, lt=1)
    split_seed: int
    train_images: int = Field(ge=0)
    test_images: int = Field(ge=0)
    train_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    test_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    skipped: list[str] = Field(default_factory=list)  # unreadable files (relative to ROOT)


@dataclass(frozen=True)
class Entry:
    path: Path
    relative: str  # to ROOT, with "/" separators
    label: int
    size: tuple[int, int]  # width, height from the header
    nbytes: int


@dataclass
class FolderScan:
    """What is in ``root``: usable images per split, and what was left out."""

    root: Path
    classes: list[str]
    train: list[Entry]
    test: list[Entry]
    test_split: Literal["val", "train"]
    test_fraction: float
    split_seed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    ignored: list[str] = field(default_factory=list)  # not images, or not in a class folder

    def entries(self, split: str) -> list[Entry]:
        return self.train if split == "train" else self.test

    def digest(self, split: str) -> str:
        h = hashlib.sha256()
        for e in self.entries(split):
            h.update(f"{e.label}\t{e.relative}\t{e.nbytes}\n".encode())
        return h.hexdigest()

    def source(self) -> FolderSource:
        return FolderSource(
            root=str(self.root.resolve()),
            test_split=self.test_split,
            test_fraction=self.test_fraction,
            split_seed=self.split_seed,
            train_images=len(self.train),
            test_images=len(self.test),
            train_sha256=self.digest("train"),
            test_sha256=self.digest("test"),
            skipped=[path for path, _ in self.skipped],
        )

    def class_counts(self, split: str) -> list[int]:
        counts = np.bincount([e.label for e in self.entries(split)], minlength=len(self.classes))
        return [int(c) for c in counts]

    def large_images(self, crop: int) -> list[Entry]:
        """Images whose shorter side is more than ``LARGE_FACTOR`` times ``crop``."""
        return [e for e in self.train + self.test if min(e.size) > LARGE_FACTOR * crop]


def in_test_share(seed: int, relative: str, fraction: float) -> bool:
    """Whether a ``train/`` file belongs to the test split when there is no ``val/``."""
    digest = hashlib.sha256(f"{seed}\0{relative}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _class_dirs(directory: Path) -> list[str]:
    return sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def _probe(path: Path) -> tuple[int, int] | str:
    """The image's size from its header, or why it cannot be read."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            return int(width), int(height)
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except Image.DecompressionBombError:
        return "too many pixels (decompression bomb guard)"
    except (OSError, ValueError, SyntaxError) as err:
        return f"cannot be opened ({str(err).splitlines()[0] if str(err) else type(err).__name__})"


def _scan_split(
    root: Path, folder: str, classes: list[str], scan: FolderScan
) -> dict[str, list[Entry]]:
    """Usable images of ``ROOT/folder`` by class (unreadable ones go to ``scan.skipped``)."""
    out: dict[str, list[Entry]] = {}
    for label, cls in enumerate(classes):
        entries: list[Entry] = []
        for path in sorted((root / folder / cls).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            relative = path.relative_to(root).as_posix()
            if path.suffix.lower() not in EXTENSIONS:
                scan.ignored.append(relative)
                continue
            probed = _probe(path)
            if isinstance(probed, str):
                scan.skipped.append((relative, probed))
                continue
            entries.append(Entry(path, relative, label, probed, path.stat().st_size))
        out[cls] = entries
    return out


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def scan_folder(
    root: str | os.PathLike[str] | None,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = 0,
) -> FolderScan:
    """List and check the images under ``root`` (headers only: nothing is decoded)."""
    if root is None:
        raise DatasetNotFoundError(
            "folder: set data.root (or pass --data-root) to the directory that holds "
            "train/<class>/<images> (and optionally val/<class>/<images>)"
        )
    base = Path(root)
    if not (base / "train").is_dir():
        where = f"{base} does not exist" if not base.exists() else f"{base / 'train'} not found"
        raise DatasetNotFoundError(
            f"folder: {where}; expected {base}/train/<class>/<images> (one sub-folder per class)"
        )
    classes = _class_dirs(base / "train")
    if not classes:
        raise InvalidDatasetError(
            f"{base / 'train'}: no class folders; put the images in one sub-folder per class "
            "(train/<class>/<image>)"
        )
    if len(classes) == 1:
        raise InvalidDatasetError(
            f"{base / 'train'}: one class only ({classes[0]!r}); a classifier needs at least two "
            "class folders"
        )
    has_val = (base / "val").is_dir()
    if has_val:
        val_classes = _class_dirs(base / "val")
        if val_classes != classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            parts = []
            if only_train:
                parts.append(f"only in train/: {_names(only_train)}")
            if only_val:
                parts.append(f"only in val/: {_names(only_val)}")
            raise InvalidDatasetError(
                f"{base}: train/ and val/ hold different class folders ({'; '.join(parts)})"
            )
    scan = FolderScan(base, classes, [], [], "val" if has_val else "train",
                      test_fraction, split_seed)  # fmt: skip
    for split in ("train", "val"):  # files beside the class folders belong to no class
        if (base / split).is_dir():
            loose = sorted(f for f in (base / split).iterdir() if f.is_file())
            scan.ignored += [f.relative_to(base).as_posix() for f in loose if f.name[0] != "."]
    train = _scan_split(base, "train", classes, scan)
    empty = [f"train/{cls}" for cls, entries in train.items() if not entries]
    val = _scan_split(base, "val", classes, scan) if has_val else {}
    empty += [f"val/{cls}" for cls, entries in val.items() if not entries]
    if empty:
        raise InvalidDatasetError(
            f"{base}: empty class folder{'s' if len(empty) > 1 else ''} {_names(empty)} (no "
            "readable images); add images or remove the folder"
        )
    for entries in train.values():
        for e in entries:
            side = scan.train
            if not has_val and in_test_share(split_seed, e.relative, test_fraction):
                side = scan.test
            side.append(e)
    for entries in val.values():
        scan.test.extend(entries)
    if not scan.test:
        raise InvalidDatasetError(
            f"{base}: no test images (a {test_fraction:g} share of {len(scan.train)} training "
            "images came out empty); add a val/ folder or raise data.test_fraction"
        )
    left = [
        cls for label, cls in enumerate(classes) if not any(e.label == label for e in scan.train)
    ]
    if left:
        raise InvalidDatasetError(
            f"{base}: no training images left for {_names(left)} once the test share is taken; "
            "add images or a val/ folder"
        )
    return scan


class FolderImages:
    """One split of a scanned folder as an ``ImageDataset`` (images decoded on demand)."""

    name = FOLDER

    def __init__(self, scan: FolderScan, split: str) -> None:
        self.scan = scan
        self.split = split
        entries = scan.entries(split)
        self.files = [e.path for e in entries]
        self.labels = np.asarray([e.label for e in entries], dtype=np.int64)
        self.class_names = list(scan.classes)

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> Image.Image:
        """The image as the server would decode it (no conversion: ``to_uint8`` does that)."""
        path = self.files[index]
        try:
            return decode_image(path.read_bytes())
        except (InvalidImageError, ImageTooLargeError) as err:
            raise InvalidDatasetError(
                f"{path}: {err}; remove or replace the file (files that cannot be opened at all "
                "are skipped and counted, damaged pixel data is refused)"
            ) from err
        except OSError as err:
            raise InvalidDatasetError(f"{path}: cannot be read ({err.strerror})") from err


def check_source(scan: FolderScan, source: FolderSource) -> None:
    """Refuse a folder whose images differ from those the bundle was trained on."""
    for split, count, digest in (
        ("train", source.train_images, source.train_sha256),
        ("test", source.test_images, source.test_sha256),
    ):
        if scan.digest(split) != digest:
            now = len(scan.entries(split))
            raise InvalidDatasetError(
                f"{scan.root}: the {split} images differ from the bundle's ({now} now, {count} "
                f"at training, or files renamed or changed); pass --data-root with the folder the "
                f"bundle was trained on (it was {source.root})"
            )


def read_folder(
    split: str,
    root: str | os.PathLike[str] | None,
    source: FolderSource | None = None,
) -> FolderImages:
    """The ``split`` ("train" or "test") of a folder data set.

    With the bundle's ``source``, ``root`` defaults to where the bundle was trained, the split
    options are the bundle's, and the images must be the same (see :func:`check_source`).
    """
    if source is not None:
        where = root if root is not None else source.root
        scan = scan_folder(where, test_fraction=source.test_fraction, split_seed=source.split_seed)
        check_source(scan, source)
    else:
        scan = scan_folder(root)
    return FolderImages(scan, split)
