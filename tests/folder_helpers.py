"""A generated image folder for the ``folder`` data set tests: learnable, in every format.

Fashion-MNIST-like images (each class a bright bar at its own height, see
:func:`tests.helpers.fake_fashion_images`) are resized to a few sizes, turned to colour (each
class a tint) or kept grayscale, and written as PNG, JPEG, WebP and BMP into
``ROOT/train/<class>/``; optionally with ``val/`` and with files exitwise must skip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .helpers import fake_fashion_images

CLASSES = ["ankle_boot", "bag", "coat", "dress"]
FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("bmp", "BMP"))
SIZES = ((40, 36), (36, 48), (44, 44))  # width, height: never square in general, never 32
BAD_FILES = {
    "train/bag/empty.png": b"",
    "train/coat/not-an-image.jpg": b"<html>a saved error page</html>",
    "train/dress/garbage.webp": bytes(range(256)) * 4,
}
IGNORED_FILES = {"train/bag/notes.txt": b"photographed on 2 May", "train/coat/.DS_Store": b"\0"}


def _picture(pixels: np.ndarray, label: int, index: int) -> Image.Image:
    img = Image.fromarray(pixels).resize(SIZES[index % len(SIZES)], Image.Resampling.BILINEAR)
    if index % 5 == 4:
        return img  # grayscale files among the colour ones
    tint = np.array([[1.0, 0.6, 0.6], [0.6, 1.0, 0.6], [0.6, 0.6, 1.0], [1.0, 1.0, 0.5]])[label]
    rgb = np.asarray(img, dtype=np.float64)[..., None] * tint
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def write_folder(
    root: Path,
    per_class: int = 60,
    *,
    val_per_class: int = 0,
    bad_files: bool = False,
    classes: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """``per_class`` images per class in ``root/train`` (and ``val_per_class`` in ``root/val``)."""
    names = classes or CLASSES
    for split, count, split_seed in (("train", per_class, seed), ("val", val_per_class, seed + 1)):
        if count == 0:
            continue
        images, labels = fake_fashion_images(count * 10 * len(names), split_seed)
        for label, cls in enumerate(names):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            # Fashion-MNIST-like class c draws its bar at row 2c+3; class `label` takes class
            # `2 * label`'s images, so neighbouring classes stay easy to tell apart.
            chosen = np.flatnonzero(labels == 2 * label)[:count]
            for i, j in enumerate(chosen):
                ext, fmt = FORMATS[i % len(FORMATS)]
                _picture(images[j], label, i).save(folder / f"{cls}-{i:03d}.{ext}", fmt)
    if bad_files:
        for relative, data in {**BAD_FILES, **IGNORED_FILES}.items():
            (root / relative).write_bytes(data)
    return root


def truncate(path: Path) -> Path:
    """Cut an image file short: its header still opens, its pixel data is damaged."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # small files: keep the header whole
    return path
