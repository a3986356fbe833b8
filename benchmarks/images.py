"""The images a load test sends: files from a directory, or a data set's first test images,
encoded as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from exitwise.datasets import FolderSource

from .errors import BenchError


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_images(
    count: int,
    images_dir: Path | None = None,
    dataset: str | None = None,
    data_root: Path | None = None,
    source: FolderSource | None = None,
) -> list[bytes]:
    """Encoded images to send: files from ``images_dir``, or the first test images of a data set
    (``source``: a folder data set's record from the bundle's manifest)."""
    if images_dir is not None:
        files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise BenchError(f"{images_dir}: no image files")
        return [p.read_bytes() for p in files[:count]]
    if dataset is None:
        raise BenchError("the model names no data set: pass --dataset or --images")
    return load_labelled_images(count, dataset, data_root, source)[0]


def load_labelled_images(
    count: int,
    dataset: str,
    data_root: Path | None = None,
    source: FolderSource | None = None,
) -> tuple[list[bytes], list[int]]:
    """The first ``count`` test images of a data set as PNG, and their labels."""
    from exitwise.datasets import open_dataset

    ds = open_dataset(dataset, "test", data_root, source=source)
    n = min(count, len(ds))
    return [encode_png(ds.image(i)) for i in range(n)], [int(x) for x in ds.labels[:n]]
