"""Request payloads to network input: encoded images or ready-made tensors.

Encoded images go through the one evaluation path training and calibration use
(``exitwise.preprocess``: ``decode_image`` with the pixel limit, ``to_uint8``, ``normalize``),
so a served image is bit-identical to the same image in calibration. These functions are
synchronous and CPU-bound: the service runs them in a thread pool, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from exitwise.preprocess import (
    ImageTooLargeError,
    InvalidImageError,
    Preprocessing,
    decode_image,
    normalize,
    to_uint8,
)

from .errors import BadRequestError


def _label(labels: Sequence[str] | None, i: int, n: int) -> str:
    if labels is not None and labels[i]:
        return f"image {labels[i]!r}: "
    return f"image {i + 1}: " if n > 1 else ""


def decode_images(
    blobs: Sequence[bytes],
    spec: Preprocessing,
    max_pixels: int,
    labels: Sequence[str] | None = None,
) -> Tensor:
    """Encoded images (PNG, JPEG, ...) to a normalised ``[N, C, H, W]`` float32 batch."""
    return normalize(torch.from_numpy(decode_pixels(blobs, spec, max_pixels, labels)), spec)


def decode_pixels(
    blobs: Sequence[bytes],
    spec: Preprocessing,
    max_pixels: int,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Encoded images to the uint8 ``[N, C, crop, crop]`` pixels :func:`normalize` takes.

    Normalising is elementwise, so the engine normalises the pixels of many requests in one
    call (the same values, bit for bit, as one request at a time, at a fraction of the cost).
    """
    arrays = []
    for i, blob in enumerate(blobs):
        where = _label(labels, i, len(blobs))
        try:
            img = decode_image(blob, max_pixels)
            try:
                arrays.append(to_uint8(img, spec))
            finally:
                img.close()
        except ImageTooLargeError as err:
            raise ImageTooLargeError(f"{where}{err}") from None
        except InvalidImageError as err:
            raise InvalidImageError(f"{where}{err}") from None
    return np.stack(arrays)


def tensor_images(array: np.ndarray, spec: Preprocessing) -> Tensor:
    """An already preprocessed FP32 ``[N, C, H, W]`` batch, checked against the model's input."""
    expected = (spec.channels, spec.input_size, spec.input_size)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise BadRequestError(
            f"tensor input must have shape [N, {expected[0]}, {expected[1]}, {expected[2]}] "
            f"(normalised NCHW), not {list(array.shape)}"
        )
    if array.shape[0] < 1:
        raise BadRequestError("tensor input holds no images")
    if not np.isfinite(array).all():
        raise BadRequestError("tensor input contains NaN or infinite values")
    # A private, writable copy: the request's buffer may be read-only or reused.
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True))
