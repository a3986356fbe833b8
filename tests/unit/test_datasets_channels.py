"""Fashion-MNIST as 3-channel input (``data.channels: 3``) for the CIFAR architectures: the grey
channel replicated, bit-identical between training's in-memory stack and the evaluation path, and
the 1-channel default untouched."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exitwise.datasets import EvalImages, default_preprocessing, open_dataset
from exitwise.errors import ExitwiseError
from exitwise.preprocess import FASHION_MNIST, decode_image, normalize, preprocess
from training.config import RecipeError
from training.data import Normalizer, stack_images
from training.folder_data import input_preprocessing
from training.recipe_io import build_recipe

from ..training_helpers import fake_fmnist


def test_rgb_preprocessing_replicates_the_grey_channel() -> None:
    rgb = default_preprocessing("fashion-mnist", 3)
    assert rgb.channels == 3 and rgb.mean == FASHION_MNIST.mean * 3
    assert rgb.std == FASHION_MNIST.std * 3
    # The geometry is Fashion-MNIST's: 28 pixels padded by 2 to the CIFAR nets' 32.
    assert (rgb.input_size, rgb.resize, rgb.crop, rgb.pad) == (32, 28, 28, 2)
    # The default is the very object it was before, with or without channels: 1.
    assert default_preprocessing("fashion-mnist") is FASHION_MNIST
    assert default_preprocessing("fashion-mnist", 1) is FASHION_MNIST
    with pytest.raises(ExitwiseError, match="cifar10 is read with 3 channels, not 1"):
        default_preprocessing("cifar10", 1)


def test_recipe_key_is_offered_where_it_means_something() -> None:
    base = {"model": {"preset": "msdnet-cifar10"}, "epochs": 1, "batch_size": 8}
    fm = {"dataset": "fashion-mnist"}
    recipe = build_recipe({**base, "data": fm}, ["data.channels=3"])
    assert recipe.data.channels == 3
    assert input_preprocessing(recipe.data) == default_preprocessing("fashion-mnist", 3)
    assert input_preprocessing(build_recipe({**base, "data": fm}).data) is FASHION_MNIST
    with pytest.raises(RecipeError, match="channels applies to folder data sets; cifar10 has"):
        build_recipe({**base, "data": {"dataset": "cifar10"}}, ["data.channels=1"])
    with pytest.raises(RecipeError, match="image_size applies to folder"):
        build_recipe({**base, "data": fm}, ["data.channels=3", "data.image_size=32"])


def test_training_stack_equals_the_eval_and_serving_paths(tmp_path: Path) -> None:
    fake_fmnist(tmp_path, n_train=12, n_test=5)
    train = open_dataset("fashion-mnist", "train", tmp_path)
    rgb = default_preprocessing("fashion-mnist", 3)
    stacked = stack_images(train, rgb)  # the vectorised grey -> colour path
    assert stacked.shape == (12, 3, 32, 32) and stacked.dtype == torch.uint8
    assert torch.equal(stacked[:, 0], stacked[:, 1]) and torch.equal(stacked[:, 0], stacked[:, 2])
    assert torch.equal(stacked[:, :1], stack_images(train, FASHION_MNIST))
    view = EvalImages(train, rgb)  # PIL's "L" -> "RGB", what calibration and the server run
    eval_batch = normalize(torch.stack([view[i][0] for i in range(12)]), rgb)
    assert torch.equal(Normalizer(rgb, torch.device("cpu"), False)(stacked), eval_batch)
    # A grey PNG upload, decoded as the server does, gives the same input.
    buf = io.BytesIO()
    Image.fromarray(np.asarray(train.image(3))).save(buf, format="PNG")
    served = preprocess([decode_image(buf.getvalue())], rgb)
    assert torch.equal(served[0], eval_batch[3])
