"""Traffic that drifts away from the held-out split: seeded image shifts for ``bench drift``.

Each takes uint8 pixels ``[N, C, H, W]`` (the crop the network sees, before normalisation) and
returns new pixels of the same shape. They mimic what changes in front of a deployed camera:
sensor noise, focus, light, orientation, and a different kind of image altogether.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _per_image(pixels: np.ndarray, fn: Callable[[Image.Image, int], Image.Image]) -> np.ndarray:
    out = np.empty_like(pixels)
    for i, img in enumerate(pixels):
        mode = "L" if img.shape[0] == 1 else "RGB"
        arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        res = np.asarray(fn(Image.fromarray(arr, mode), i))
        out[i] = res[None] if res.ndim == 2 else res.transpose(2, 0, 1)
    return out


def noise(pixels: np.ndarray, rng: np.random.Generator, sigma: float = 40.0) -> np.ndarray:
    """Sensor noise: Gaussian, sigma in grey levels."""
    noisy = pixels.astype(np.float32) + rng.normal(0.0, sigma, pixels.shape)
    out: np.ndarray = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


def blur(pixels: np.ndarray, rng: np.random.Generator, radius: float = 1.2) -> np.ndarray:
    """Out of focus: a Gaussian blur."""
    return _per_image(pixels, lambda img, _: img.filter(ImageFilter.GaussianBlur(radius)))


def dim(pixels: np.ndarray, rng: np.random.Generator, factor: float = 0.45) -> np.ndarray:
    """Less light: every pixel scaled down (lower contrast against the black background)."""
    out: np.ndarray = (pixels.astype(np.float32) * factor).round().astype(np.uint8)
    return out


def rotate(pixels: np.ndarray, rng: np.random.Generator, degrees: float = 30.0) -> np.ndarray:
    """A tilted camera: each image turned by up to ``degrees`` either way."""
    angles = rng.uniform(-degrees, degrees, len(pixels))
    return _per_image(
        pixels, lambda img, i: img.rotate(float(angles[i]), resample=Image.Resampling.BILINEAR)
    )


def digits(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another kind of image: handwriting-like digits drawn with PIL's built-in font, scaled up,
    placed and turned at random (no data set to download)."""
    font = ImageFont.load_default()
    _, channels, h, w = pixels.shape
    out = np.empty_like(pixels)
    for i in range(len(pixels)):
        small = Image.new("L", (12, 12), 0)
        ImageDraw.Draw(small).text((3, 0), str(int(rng.integers(0, 10))), fill=255, font=font)
        size = int(rng.integers(h // 2, h))
        big = small.resize((size, size), Image.Resampling.BILINEAR)
        big = big.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)
        canvas = Image.new("L", (w, h), 0)
        canvas.paste(big, (int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))))
        arr = np.asarray(canvas)
        out[i] = np.repeat(arr[None], channels, axis=0)
    return out


SHIFTS: dict[str, Shift] = {
    "noise": noise,
    "blur": blur,
    "dim": dim,
    "rotate": rotate,
    "digits": digits,
    # Milder versions: shifts of +5 to +25 % on the demo model, the hardest to see in time.
    "noise-mild": lambda p, rng: noise(p, rng, sigma=15.0),
    "blur-mild": lambda p, rng: blur(p, rng, radius=0.7),
    "dim-mild": lambda p, rng: dim(p, rng, factor=0.7),
    "rotate-mild": lambda p, rng: rotate(p, rng, degrees=15.0),
}
DEFAULT = ("noise", "blur", "dim", "rotate", "digits")
