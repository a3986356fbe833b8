"""Decoding and evaluation preprocessing shared by training, calibration and serving."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from exitwise.preprocess import (
    CIFAR10,
    FASHION_MNIST,
    IMAGENET,
    ImageTooLargeError,
    InvalidImageError,
    Preprocessing,
    decode_image,
    normalize,
    preprocess,
    to_uint8,
)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_fashion_mnist_image_is_padded_to_32() -> None:
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    x = preprocess([pixels], FASHION_MNIST)
    assert x.shape == (1, 1, 32, 32)
    zero = (0.0 - 0.2860) / 0.3530
    assert torch.allclose(x[0, 0, :2], torch.full((2, 32), zero))
    inner = (torch.from_numpy(pixels).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(x[0, 0, 2:30, 2:30], inner)


def test_decoded_png_equals_the_raw_array() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    decoded = decode_image(_png(Image.fromarray(pixels)))
    a = preprocess([decoded], FASHION_MNIST)
    b = preprocess([pixels], FASHION_MNIST)
    assert torch.equal(a, b)


def test_batched_and_single_paths_are_bit_identical() -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    batch = normalize(torch.from_numpy(np.stack([to_uint8(a, CIFAR10) for a in arrays])), CIFAR10)
    for i, a in enumerate(arrays):
        assert torch.equal(batch[i : i + 1], preprocess([a], CIFAR10))


def test_colour_image_for_a_grayscale_model_and_resize() -> None:
    img = Image.new("RGB", (56, 84), (200, 100, 50))
    arr = to_uint8(img, FASHION_MNIST)
    assert arr.shape == (1, 28, 28)
    x = preprocess([img], FASHION_MNIST)
    assert x.shape == (1, 1, 32, 32)


def test_imagenet_resize_and_centre_crop() -> None:
    img = Image.new("RGB", (500, 375))
    assert to_uint8(img, IMAGENET).shape == (3, 224, 224)


def test_transparent_png_is_composited_on_black() -> None:
    img = Image.new("RGBA", (32, 32), (255, 255, 255, 0))
    arr = to_uint8(decode_image(_png(img)), CIFAR10)
    assert arr.max() == 0


def test_garbage_and_empty_bytes_are_refused() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(InvalidImageError, match="not a supported image format"):
        decode_image(b"definitely not an image")
    data = _png(Image.new("L", (64, 64), 7))
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A 4000x4000 PNG of one colour compresses to a few KB.
    data = _png(Image.new("L", (4000, 4000), 0))
    assert len(data) < 100_000
    with pytest.raises(ImageTooLargeError, match="16000000 pixels"):
        decode_image(data, max_pixels=1_000_000)
    assert decode_image(data, max_pixels=16_000_000).size == (4000, 4000)


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        Preprocessing(input_size=32, channels=3, crop=32, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError):
        Preprocessing(input_size=32, channels=1, crop=28, mean=(0.5,), std=(0.5,))
