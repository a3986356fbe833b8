#!/usr/bin/env python3
"""Write an image folder to try the ``folder`` data set on: ``OUT/train/<class>/<image>``.

By default the images are real: Fashion-MNIST test images (Debian's ``dataset-fashion-mnist``,
see scripts/get-fashion-mnist.sh), upscaled to a few sizes between 40 and 96 pixels (not square),
tinted with a random colour each (every fifth stays grayscale) and saved as PNG, JPEG, WebP and
BMP, 10 classes named after Fashion-MNIST's. ``--synthetic`` writes the folder the tests generate
instead (4 classes of bars, no data needed). Either way a few files exitwise must skip are added:
an empty PNG, a web page saved as ``.jpg`` and a ``notes.txt``.

    python scripts/make_image_folder.py data/my-images                # 10 x 300 real images
    python scripts/make_image_folder.py data/tiny --synthetic --per-class 50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from exitwise.datasets import open_dataset  # noqa: E402
from exitwise.errors import ExitwiseError  # noqa: E402

CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle_boot"]  # fmt: skip
SIZES = ((56, 64), (72, 48), (96, 96), (40, 52))  # width, height
FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("bmp", "BMP"))
LEFT_OUT = {
    "train/bag/empty.png": b"",
    "train/coat/saved-page.jpg": b"<html><body>404 Not Found</body></html>",
    "train/sneaker/notes.txt": b"Fashion-MNIST test images (scripts/make_image_folder.py)\n",
}


def _picture(pixels: np.ndarray, i: int, rng: np.random.Generator) -> Image.Image:
    img = Image.fromarray(pixels).resize(SIZES[i % len(SIZES)], Image.Resampling.BICUBIC)
    if i % 5 == 4:
        return img
    tint = rng.uniform(0.5, 1.0, 3)
    rgb = np.asarray(img, dtype=np.float64)[..., None] * tint
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def write_fashion_folder(out: Path, per_class: int, data_root: Path | None) -> int:
    test = open_dataset("fashion-mnist", "test", data_root)
    rng = np.random.default_rng(0)
    written = 0
    for label, name in enumerate(CLASSES):
        folder = out / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, j in enumerate(np.flatnonzero(test.labels == label)[:per_class]):
            ext, fmt = FORMATS[i % len(FORMATS)]
            pixels = np.asarray(test.image(int(j)), dtype=np.uint8)
            _picture(pixels, i, rng).save(folder / f"{name}-{i:04d}.{ext}", fmt)
            written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--per-class", type=int, default=300, help="images per class")
    parser.add_argument("--synthetic", action="store_true", help="the tests' generated images")
    parser.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST's idx files")
    args = parser.parse_args()
    if args.out.exists():
        print(f"error: {args.out} already exists", file=sys.stderr)
        return 1
    try:
        if args.synthetic:
            from tests.folder_helpers import write_folder

            write_folder(args.out, per_class=args.per_class)
            written = sum(1 for p in (args.out / "train").rglob("*") if p.is_file())
        else:
            written = write_fashion_folder(args.out, args.per_class, args.data_root)
    except ExitwiseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    extra = 0
    for relative, data in LEFT_OUT.items():
        path = args.out / relative
        if path.parent.is_dir():  # the synthetic folder has other classes
            path.write_bytes(data)
            extra += 1
    print(f"wrote {written} images (and {extra} files exitwise skips) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
