"""Image decoding and evaluation preprocessing, shared by training, calibration and serving.

Every path that feeds an image to a trained network at evaluation time goes through
:func:`to_uint8` (geometry: colour mode, resize, centre crop) and :func:`normalize` (pixels to
normalised floats, zero padding). Training's held-out and test loaders, calibration and the server
therefore see bit-identical inputs for the same image. Training augmentation (random crops and
flips) is separate and lives in ``training``.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from .errors import ExitwiseError


class InvalidImageError(ExitwiseError):
    """Bytes that are not a decodable image."""


class ImageTooLargeError(ExitwiseError):
    """An image with more pixels than allowed (refused before it is decoded in full)."""


class Preprocessing(BaseModel):
    """How a decoded image becomes the network's input (stored in every bundle's manifest).

    Steps, in order: convert to ``channels`` (1 = grayscale "L", 3 = "RGB"); if the shorter side
    is not ``resize``, resize it to ``resize`` (bilinear); if the image is not ``crop`` square,
    centre-crop it; scale to [0, 1]; zero-pad ``pad`` pixels on every side; normalise with
    ``mean``/``std``. The result is ``channels x input_size x input_size``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_size: int = Field(gt=0)
    channels: Literal[1, 3]
    resize: int | None = Field(default=None, gt=0)
    crop: int = Field(gt=0)
    pad: int = Field(default=0, ge=0)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _consistent(self) -> Preprocessing:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.crop + 2 * self.pad != self.input_size:
            raise ValueError("crop + 2 * pad must equal input_size")
        if self.resize is not None and self.resize < self.crop:
            raise ValueError("resize must be at least crop")
        return self


FASHION_MNIST = Preprocessing(
    input_size=32, channels=1, resize=28, crop=28, pad=2, mean=(0.2860,), std=(0.3530,)
)
CIFAR10 = Preprocessing(
    input_size=32,
    channels=3,
    resize=32,
    crop=32,
    mean=(0.4914, 0.4824, 0.4467),
    std=(0.2471, 0.2435, 0.2616),
)
CIFAR100 = Preprocessing(
    input_size=32,
    channels=3,
    resize=32,
    crop=32,
    mean=(0.5071, 0.4867, 0.4408),
    std=(0.2675, 0.2565, 0.2761),
)
IMAGENET = Preprocessing(
    input_size=224,
    channels=3,
    resize=256,
    crop=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...), refusing more than ``max_pixels`` pixels.

    The size is read from the header before any pixel is decoded, so a decompression bomb costs
    nothing.
    """
    if not data:
        raise InvalidImageError("empty image")
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InvalidImageError("cannot decode image: not a supported image format") from err
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError("image has too many pixels") from err
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError("image has too many pixels") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise InvalidImageError("cannot decode image: the data is truncated or corrupted") from err
    return img


def to_uint8(img: Image.Image | np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Geometry: a PIL image or ``HxW``/``HxWxC`` uint8 array to ``C x crop x crop`` uint8."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise ValueError(f"expected a uint8 array, got {img.dtype}")
        img = Image.fromarray(img)
    mode = "L" if spec.channels == 1 else "RGB"
    if img.mode != mode:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Composite transparency onto black, the value zero padding also uses.
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img)
        try:
            img = img.convert(mode)
        except (ValueError, OSError):  # Pillow opened it, but has no way to this mode (CIELab)
            raise InvalidImageError(f"cannot read an image of mode {img.mode} as {mode}") from None
    if spec.resize is not None and min(img.size) != spec.resize:
        w, h = img.size
        scale = spec.resize / min(w, h)
        size = (max(spec.resize, round(w * scale)), max(spec.resize, round(h * scale)))
        img = img.resize(size, Image.Resampling.BILINEAR)
    w, h = img.size
    if (w, h) != (spec.crop, spec.crop):
        if min(w, h) < spec.crop:
            raise InvalidImageError(
                f"image is {w}x{h}, smaller than the {spec.crop}x{spec.crop} the model needs"
            )
        left, top = (w - spec.crop) // 2, (h - spec.crop) // 2
        img = img.crop((left, top, left + spec.crop, top + spec.crop))
    arr = np.array(img, dtype=np.uint8)  # a writable copy, whatever PIL shares
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def normalize(batch: Tensor, spec: Preprocessing) -> Tensor:
    """Pixel step: ``[N, C, crop, crop]`` uint8 to ``[N, C, input_size, input_size]`` float32."""
    if batch.dtype != torch.uint8 or batch.dim() != 4:
        raise ValueError("normalize expects a [N, C, H, W] uint8 tensor")
    x = batch.float().div_(255.0)
    if spec.pad:
        x = torch.nn.functional.pad(x, (spec.pad,) * 4, value=0.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def preprocess(images: list[Image.Image | np.ndarray], spec: Preprocessing) -> Tensor:
    """Decoded images to one normalised input batch."""
    arrays = [to_uint8(img, spec) for img in images]
    return normalize(torch.from_numpy(np.stack(arrays)), spec)
