"""Training data: augmentation, normalisation, the train/held-out separation, batch streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exitwise.datasets import DatasetNotFoundError, EvalImages, open_dataset
from exitwise.datasets.readers import ArrayDataset
from exitwise.preprocess import CIFAR10, FASHION_MNIST, normalize
from training.config import DataSpec
from training.data import (
    FolderStream,
    InMemoryStream,
    Normalizer,
    build_stream,
    make_split,
    random_crop_flip,
    stack_images,
)

from ..training_helpers import (
    fake_fmnist,
    one_thread,  # noqa: F401  (autouse: one thread)
    write_cifar10,
    write_image_folder,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_without_padding_or_flip_is_identity() -> None:
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(x, 0, _gen(), flip=False), x)


def test_crops_are_shifted_windows_of_the_zero_padded_image() -> None:
    x = torch.randint(1, 256, (64, 1, 6, 6), dtype=torch.uint8)
    out = random_crop_flip(x, 2, _gen(), flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(64):
        windows = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])
        ]
        assert windows, "every output is a window of the padded image"
        shifts.add(windows[0])
    assert len(shifts) > 10  # offsets vary over the batch


def test_flip_mirrors_some_images_and_is_reproducible() -> None:
    x = torch.randint(0, 256, (64, 3, 5, 5), dtype=torch.uint8)
    out = random_crop_flip(x, 0, _gen(3))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54
    assert torch.equal(out, random_crop_flip(x, 0, _gen(3)))


def test_training_normalisation_equals_the_eval_path(tmp_path: Path) -> None:
    fake_fmnist(tmp_path, n_train=20, n_test=5)
    train = open_dataset("fashion-mnist", "train", tmp_path)
    stacked = stack_images(train, FASHION_MNIST)
    assert stacked.shape == (20, 1, 32, 32) and stacked.dtype == torch.uint8
    view = EvalImages(train, FASHION_MNIST)
    eval_batch = normalize(torch.stack([view[i][0] for i in range(20)]), FASHION_MNIST)
    train_batch = Normalizer(FASHION_MNIST, torch.device("cpu"), False)(stacked)
    assert torch.equal(train_batch, eval_batch)  # un-augmented: bit-identical inputs
    cl = Normalizer(FASHION_MNIST, torch.device("cpu"), True)(stacked)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, eval_batch)


def test_split_keeps_heldout_apart_and_subsets_are_seeded(tmp_path: Path) -> None:
    fake_fmnist(tmp_path, n_train=300, n_test=5)
    train = open_dataset("fashion-mnist", "train", tmp_path)
    spec = DataSpec(dataset="fashion-mnist", heldout_size=50, split_seed=4)
    split = make_split(train, spec)
    assert len(split.heldout) == 50 and len(split.train) == 250
    assert not set(split.train.tolist()) & set(split.heldout.tolist())
    assert split.info.size == 50 and split.info.seed == 4
    sub = make_split(train, spec.model_copy(update={"train_subset": 40}))
    assert np.array_equal(sub.heldout, split.heldout)  # the subset never moves the held-out split
    assert len(sub.train) == 40 and set(sub.train.tolist()) <= set(split.train.tolist())
    again = make_split(train, spec.model_copy(update={"train_subset": 40}))
    assert np.array_equal(again.train, sub.train)


def _labelled_by_index(n: int) -> ArrayDataset:
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    return ArrayDataset("fashion-mnist", "train", images, np.arange(n), [str(i) for i in range(n)])


def test_stream_trains_on_training_indices_only_and_resumes_exactly() -> None:
    ds = _labelled_by_index(200)  # the label is the image's index
    split = make_split(ds, DataSpec(dataset="fashion-mnist", heldout_size=40))
    stream = build_stream(ds, split, DataSpec(dataset="fashion-mnist"), batch_size=32, seed=7,
                          device=torch.device("cpu"))  # fmt: skip
    assert isinstance(stream, InMemoryStream) and stream.num_batches == 160 // 32
    seen = []
    batches = list(stream.epoch(0))
    for x, y in batches:
        assert x.shape == (32, 1, 32, 32)
        seen += y.tolist()
    assert len(set(seen)) == len(seen) == 160  # each training image once per epoch
    assert set(seen) == set(split.train.tolist())  # never a held-out image
    assert [b[1].tolist() for b in stream.epoch(1)] != [b[1].tolist() for b in batches]
    tail = list(stream.epoch(0, start=3))  # resuming at batch 3: the same batches, bit for bit
    for (x0, y0), (x1, y1) in zip(batches[3:], tail, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_processes_take_slices_of_the_same_global_batch() -> None:
    ds = _labelled_by_index(100)
    split = make_split(ds, DataSpec(dataset="fashion-mnist", heldout_size=20))
    kw = {"batch_size": 16, "seed": 1, "augment": True, "device": torch.device("cpu")}
    images = stack_images(ds, FASHION_MNIST)
    labels = torch.arange(100)
    whole = list(InMemoryStream(images, labels, split.train, **kw).epoch(2))  # type: ignore[arg-type]
    parts = [
        list(InMemoryStream(images, labels, split.train, rank=r, world=2, **kw).epoch(2))  # type: ignore[arg-type]
        for r in range(2)
    ]
    for b, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][b][1], parts[1][b][1]]), y)
        assert torch.equal(torch.cat([parts[0][b][0], parts[1][b][0]]), x)


def test_cifar_stream(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=8)
    train = open_dataset("cifar10", "train", tmp_path)
    spec = DataSpec(dataset="cifar10", root=str(tmp_path), heldout_size=8)
    split = make_split(train, spec)
    stream = build_stream(train, split, spec, batch_size=8, seed=0, device=torch.device("cpu"))
    x, y = next(iter(stream.epoch(0)))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (8,)
    plain = build_stream(train, split, spec.model_copy(update={"augment": False}), batch_size=8,
                         seed=0, device=torch.device("cpu"))  # fmt: skip
    x, _ = next(iter(plain.epoch(0)))
    view = EvalImages(train, CIFAR10, split.train)  # un-augmented: the training images as is
    originals = {view[i][0].numpy().tobytes() for i in range(len(view))}
    assert all(img.numpy().tobytes() in originals for img in x)


def test_image_folder_stream(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=4)
    train = open_dataset("imagenet", "train", tmp_path)
    spec = DataSpec(dataset="imagenet", root=str(tmp_path), heldout_size=2, workers=0)
    split = make_split(train, spec)
    stream = build_stream(train, split, spec, batch_size=2, seed=0, device=torch.device("cpu"))
    assert isinstance(stream, FolderStream) and stream.num_batches == 3
    batches = list(stream.epoch(0))
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == (2, 3, 224, 224) and x.dtype == torch.uint8
        assert set(y.tolist()) <= {0, 1}
    again = list(stream.epoch(0, start=1))  # random crops are seeded per image: exact resume
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[1:], again, strict=True))
    assert not torch.equal(batches[0][0][0], batches[0][0][1])


def test_too_few_images_and_missing_data(tmp_path: Path) -> None:
    ds = _labelled_by_index(30)
    split = make_split(ds, DataSpec(dataset="fashion-mnist", heldout_size=20))
    with pytest.raises(Exception, match="fewer than one batch"):
        build_stream(ds, split, DataSpec(dataset="fashion-mnist"), batch_size=16, seed=0,
                     device=torch.device("cpu"))  # fmt: skip
    with pytest.raises(DatasetNotFoundError, match="not found in"):
        open_dataset("fashion-mnist", "train", tmp_path)
