"""Training data: the held-out split, augmentation, normalisation, and per-epoch batch streams.

Built on :mod:`exitwise.datasets` (readers, ``heldout_split``, ``train_indices``), which
calibration and serving use too. Held-out images are never trained on and never augmented; their
accuracy is measured through ``EvalImages`` + ``exitwise.preprocess.normalize``, the path
calibration and the server take.

- In-memory sets (Fashion-MNIST, CIFAR) live as one ``[N, C, S, S]`` uint8 tensor (the eval
  geometry applied once, Fashion-MNIST zero-padded 28 -> 32); augmentation (random crop with 4
  pixels of zero padding, horizontal flip) runs on whole uint8 batches, on the training device.
- Folder data sets (your own images) are decoded once into memory by
  :mod:`training.folder_data` and then treated like CIFAR, with a random-crop padding of an
  eighth of the crop.
- Image folders (ImageNet) go through torchvision (``RandomResizedCrop(224)`` + flip) in
  DataLoader worker processes and arrive as uint8 batches.

Batches are drawn from a per-epoch permutation that is a pure function of ``(seed, epoch)``,
and each batch's augmentation from generators seeded with ``(seed, epoch, batch)`` (image folders:
per image, so the number of loader workers does not matter either). A run
resumed at any batch therefore sees exactly the data an uninterrupted run sees. With several
processes, each takes its slice of every global batch (the equivalent of a DistributedSampler
over a shared permutation), so what is trained on does not depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from exitwise.bundle import HeldOutSplit, indices_sha256
from exitwise.datasets import (
    FOLDER,
    EvalImages,
    ImageDataset,
    InvalidDatasetError,
    default_preprocessing,
    heldout_split,
    train_indices,
)
from exitwise.datasets.readers import ArrayDataset
from exitwise.preprocess import Preprocessing, to_uint8

from .config import DataSpec

CROP_PADDING = 4  # random-crop padding of the 32x32 sets (algorithm.md section 7)


def crop_padding(spec: Preprocessing) -> int:
    """A folder data set's random-crop padding: an eighth of the crop, as 4 is of 32."""
    return max(1, round(spec.crop / 8))


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 mixing), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


# --- the split ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices trained on (ascending)
    heldout: np.ndarray  # held-out indices (never trained on, never augmented)
    info: HeldOutSplit


def make_split(dataset: ImageDataset, spec: DataSpec) -> Split:
    """The held-out split (seeded by ``split_seed``) and the training indices (optionally a
    seeded subset of them)."""
    n = len(dataset)
    size = spec.heldout_count(n)
    held = heldout_split(n, size, spec.split_seed)
    train = train_indices(n, held)
    if spec.train_subset is not None and spec.train_subset < len(train):
        gen = torch.Generator().manual_seed(derived_seed(spec.split_seed, 1))
        chosen = torch.randperm(len(train), generator=gen)[: spec.train_subset].numpy()
        train = np.sort(train[chosen])
    info = HeldOutSplit(
        dataset=spec.dataset, size=size, seed=spec.split_seed, sha256=indices_sha256(held)
    )
    return Split(train=train, heldout=held, info=info)


# --- augmentation and normalisation (uint8 batches, any device) ------------------------------


def random_crop_flip(
    batch: Tensor, padding: int, generator: torch.Generator, flip: bool = True
) -> Tensor:
    """Random ``H x W`` crops of the zero-padded ``[B, C, H, W]`` uint8 batch, then random
    horizontal flips; one gather, on the batch's device. The random numbers come from the CPU
    ``generator``, so the result does not depend on the device."""
    b, _, h, w = batch.shape
    device = batch.device
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    padded = torch.nn.functional.pad(batch, (padding,) * 4) if padding else batch
    rows = offsets[:, 0:1] + torch.arange(h)  # [B, H]
    cols = torch.arange(w).expand(b, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols) + offsets[:, 1:2]  # [B, W]
    rows, cols = rows.to(device), cols.to(device)
    index = torch.arange(b, device=device)[:, None, None, None]
    channel = torch.arange(batch.shape[1], device=device)[None, :, None, None]
    return padded[index, channel, rows[:, None, :, None], cols[:, None, None, :]]


class Normalizer:
    """uint8 ``[B, C, S, S]`` (already ``input_size``) to normalised float input, on device."""

    def __init__(self, spec: Preprocessing, device: torch.device, channels_last: bool) -> None:
        self.mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __call__(self, batch: Tensor) -> Tensor:
        # Same arithmetic as exitwise.preprocess.normalize: x / 255, then (x - mean) / std.
        x = (batch.float().div_(255.0) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


# --- batch streams ------------------------------------------------------------------------------


class TrainStream(Protocol):
    """Global batches of uint8 images (this process's slice) and labels, on the device."""

    @property
    def num_batches(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]: ...


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    gen = torch.Generator().manual_seed(derived_seed(seed, epoch, 2))
    return torch.randperm(n, generator=gen)


def _rank_slice(batch: Tensor, rank: int, world: int) -> Tensor:
    per = batch.shape[0] // world
    return batch[rank * per : (rank + 1) * per]


def stack_images(dataset: ImageDataset, spec: Preprocessing) -> Tensor:
    """All images of an in-memory data set in the eval geometry, zero-padded to ``input_size``.

    Arrays already of the crop size and channel count are reshaped without per-image work;
    anything else goes through :func:`exitwise.preprocess.to_uint8` image by image.
    """
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        arr = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        if arr.shape[1] == 1 and spec.channels == 3:
            # Grey to colour, as PIL's "L" -> "RGB" (to_uint8) does it: the channel repeated.
            arr = np.repeat(arr, 3, axis=1)
        if arr.shape[1:] != (spec.channels, spec.crop, spec.crop):
            arr = np.stack([to_uint8(images[i], spec) for i in range(len(images))])
    else:
        arr = np.stack([to_uint8(dataset.image(i), spec) for i in range(len(dataset))])
    arr = np.ascontiguousarray(arr)
    out = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if spec.pad:
        out = torch.nn.functional.pad(out, (spec.pad,) * 4)  # zeros: what normalize pads with
    return out


class InMemoryStream:
    """Batches of an in-memory data set, augmented on the device."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        indices: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        augment: bool,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        padding: int = CROP_PADDING,
    ) -> None:
        if len(indices) < batch_size:
            raise InvalidDatasetError(
                f"{len(indices)} training images, fewer than one batch of {batch_size}"
            )
        self.padding = padding
        # Keep the whole set on the device (CIFAR: 150 MB of uint8) when it is a GPU.
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.indices = torch.from_numpy(indices).to(device)
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.rank, self.world = rank, world

    @property
    def num_batches(self) -> int:
        return len(self.indices) // self.batch_size  # the last partial batch is dropped

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        perm = epoch_permutation(len(self.indices), self.seed, epoch).to(self.indices.device)
        for b in range(start, self.num_batches):
            rows = self.indices[perm[b * self.batch_size : (b + 1) * self.batch_size]]
            x = self.images[rows]
            if self.augment:
                gen = torch.Generator().manual_seed(derived_seed(self.seed, epoch, b, 3))
                x = random_crop_flip(x, self.padding, gen)
            yield (
                _rank_slice(x, self.rank, self.world),
                _rank_slice(self.labels[rows], self.rank, self.world),
            )


class _FolderTrainSet(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """Items are ``(index, sample_seed)`` pairs from :class:`_BatchSampler`."""

    def __init__(self, dataset: ImageDataset, spec: Preprocessing, augment: bool) -> None:
        from torchvision import transforms as T

        self.dataset = dataset
        self.spec = spec
        self.transform: Any = None
        if augment:
            steps: list[Any] = [T.RandomResizedCrop(spec.input_size), T.RandomHorizontalFlip()]
            if spec.channels == 1:
                steps.append(T.Grayscale(1))
            self.transform = T.Compose([*steps, T.PILToTensor()])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, int]:
        index, sample_seed = item
        image = self.dataset.image(index)
        if self.transform is None:
            pixels = torch.from_numpy(to_uint8(image, self.spec))
            if self.spec.pad:
                pixels = torch.nn.functional.pad(pixels, (self.spec.pad,) * 4)
        else:
            if isinstance(image, np.ndarray):
                from PIL import Image

                image = Image.fromarray(image)
            image = image.convert("RGB") if self.spec.channels == 3 else image
            # torchvision draws from the global RNG: seed it per sample, so the crops depend on
            # (seed, epoch, batch, position) only, not on which worker decodes the image.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                pixels = self.transform(image)
        return pixels, int(self.dataset.labels[index])


class _BatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    def __init__(self, indices: np.ndarray, stream: FolderStream, epoch: int, start: int) -> None:
        self.indices, self.stream, self.epoch, self.start = indices, stream, epoch, start

    def __len__(self) -> int:
        return self.stream.num_batches - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.stream
        perm = epoch_permutation(len(self.indices), s.seed, self.epoch).numpy()
        per = s.batch_size // s.world
        for b in range(self.start, s.num_batches):
            rows = self.indices[perm[b * s.batch_size : (b + 1) * s.batch_size]]
            lo = s.rank * per
            yield [
                (int(rows[j]), derived_seed(s.seed, self.epoch, b, j, 5))
                for j in range(lo, lo + per)
            ]


class FolderStream:
    """Batches of an image-folder data set, decoded and augmented in worker processes."""

    def __init__(
        self,
        dataset: ImageDataset,
        spec: Preprocessing,
        indices: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        augment: bool,
        device: torch.device,
        workers: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if len(indices) < batch_size:
            raise InvalidDatasetError(
                f"{len(indices)} training images, fewer than one batch of {batch_size}"
            )
        self.dataset = _FolderTrainSet(dataset, spec, augment)
        self.indices = indices
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.workers, self.rank, self.world = workers, rank, world

    @property
    def num_batches(self) -> int:
        return len(self.indices) // self.batch_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_BatchSampler(self.indices, self, epoch, start),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def build_stream(
    dataset: ImageDataset,
    split: Split,
    spec: DataSpec,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    preprocessing: Preprocessing | None = None,
) -> TrainStream:
    """The training batches; ``preprocessing`` defaults to the named data set's (a folder's
    comes from the recipe and the training images)."""
    preprocessing = preprocessing or default_preprocessing(spec.dataset, spec.channels)
    if isinstance(dataset, ArrayDataset):
        images = stack_images(dataset, preprocessing)
        labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
        return InMemoryStream(
            images,
            labels,
            split.train,
            batch_size=batch_size,
            seed=seed,
            augment=spec.augment,
            device=device,
            rank=rank,
            world=world,
            padding=crop_padding(preprocessing) if spec.dataset == FOLDER else CROP_PADDING,
        )
    return FolderStream(
        dataset,
        preprocessing,
        split.train,
        batch_size=batch_size,
        seed=seed,
        augment=spec.augment,
        device=device,
        workers=spec.workers,
        rank=rank,
        world=world,
    )


def eval_view(
    dataset: ImageDataset,
    indices: np.ndarray | None,
    name: str,
    preprocessing: Preprocessing | None = None,
) -> EvalImages:
    """Un-augmented images (held-out or test) in the exact eval geometry."""
    return EvalImages(dataset, preprocessing or default_preprocessing(name), indices)
