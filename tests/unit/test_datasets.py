"""Data set readers on small files written by the tests, the held-out split, the eval view."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exitwise.datasets import (
    DatasetNotFoundError,
    EvalImages,
    InvalidDatasetError,
    default_preprocessing,
    heldout_split,
    open_dataset,
    train_indices,
)
from exitwise.errors import ExitwiseError
from exitwise.preprocess import normalize, preprocess

from ..helpers import write_fashion_mnist


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path: Path, gz: bool) -> None:
    write_fashion_mnist(tmp_path, n_train=40, n_test=10, gz=gz)
    train = open_dataset("fashion-mnist", "train", tmp_path)
    test = open_dataset("fashion-mnist", "test", tmp_path)
    assert len(train) == 40 and len(test) == 10
    assert train.image(0).shape == (28, 28)
    assert train.class_names[9] == "Ankle boot"


def test_fashion_mnist_missing_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"not found in .*apt-get install"):
        open_dataset("fashion-mnist", "train", tmp_path)


def test_truncated_idx_is_refused(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InvalidDatasetError, match="header announces"):
        open_dataset("fashion-mnist", "train", tmp_path)


def _cifar_batch(n: int, key: str, rng: np.random.Generator) -> dict[str, object]:
    return {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        key: rng.integers(0, 10 if key == "labels" else 100, n).tolist(),
        "filenames": [f"{i}.png" for i in range(n)],
    }


def write_cifar10(root: Path) -> None:
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump(_cifar_batch(4, "labels", rng), f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def write_cifar100(root: Path) -> None:
    rng = np.random.default_rng(0)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    for name, n in (("train", 6), ("test", 3)):
        with open(base / name, "wb") as f:
            pickle.dump(_cifar_batch(n, "fine_labels", rng), f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, f)


def test_cifar10_python_format(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    train = open_dataset("cifar10", "train", tmp_path)
    test = open_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py")
    assert len(train) == 20 and len(test) == 4
    assert train.image(0).shape == (32, 32, 3)
    assert train.class_names == [f"c{i}" for i in range(10)]


def test_cifar100_python_format(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    train = open_dataset("cifar100", "train", tmp_path)
    assert len(train) == 6 and len(train.class_names) == 100


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py not found"):
        open_dataset("cifar10", "train", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="--data-root"):
        open_dataset("cifar100", "train", None)


def write_image_folder(root: Path) -> None:
    for split in ("train", "val"):
        for c, colour in enumerate([(255, 0, 0), (0, 255, 0)]):
            d = root / split / f"n0{c}"
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (300, 260), colour).save(d / f"img{i}.JPEG")


def test_image_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    train = open_dataset("imagenet", "train", tmp_path)
    test = open_dataset("imagenet", "test", tmp_path)
    assert len(train) == 6 and len(test) == 6
    assert train.class_names == ["n00", "n01"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x = EvalImages(test, default_preprocessing("imagenet"))[4][0]
    assert x.shape == (3, 224, 224)


def test_image_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="val"):
        open_dataset("imagenet", "test", tmp_path)


def test_unknown_dataset() -> None:
    with pytest.raises(ExitwiseError, match="unknown data set 'mnist'"):
        open_dataset("mnist", "train")


def test_heldout_split_is_deterministic_and_disjoint() -> None:
    a = heldout_split(1000, 100, seed=3)
    assert np.array_equal(a, heldout_split(1000, 100, seed=3))
    assert not np.array_equal(a, heldout_split(1000, 100, seed=4))
    assert len(np.unique(a)) == 100
    rest = train_indices(1000, a)
    assert len(rest) == 900 and not set(rest) & set(a)
    with pytest.raises(ExitwiseError, match="held-out size"):
        heldout_split(10, 10, 0)


def test_eval_images_match_the_serving_path(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    train = open_dataset("fashion-mnist", "train", tmp_path)
    spec = default_preprocessing("fashion-mnist")
    view = EvalImages(train, spec, indices=[5, 7])
    batch = normalize(torch.stack([view[0][0], view[1][0]]), spec)
    single = preprocess([train.image(7)], spec)
    assert torch.equal(batch[1:], single)
    assert view.labels.tolist() == [train.labels[5], train.labels[7]]
    with pytest.raises(InvalidDatasetError, match="out of range"):
        EvalImages(train, spec, indices=[4000])


def test_tiny_bundle_helper_learns(tmp_path: Path) -> None:
    """The shared helper trains a tiny model that really classifies the fake images."""
    from exitwise.bundle import load_bundle

    from ..helpers import make_bundle

    root = write_fashion_mnist(tmp_path / "data")
    bundle = make_bundle(tmp_path / "bundle", root)
    model = load_bundle(bundle.path).load_model()
    test = open_dataset("fashion-mnist", "test", root)
    view = EvalImages(test, default_preprocessing("fashion-mnist"))
    x = normalize(torch.stack([view[i][0] for i in range(len(view))]), view.preprocessing)
    with torch.no_grad():
        last = model(x)[-1].argmax(1).numpy()
    assert (last == view.labels).mean() > 0.7
