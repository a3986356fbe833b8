"""The training recipe: typed configuration (read from YAML with ``--set key.sub=value``
overrides by :mod:`training.recipe_io`).

Every field has a type and, where it makes sense, a default; unknown keys and type errors are
refused with one line that names the key and where it came from (the file or the ``--set``).
The resolved recipe (file + overrides + defaults) is what the trainer runs, what is saved as
``recipe.yaml`` beside the outputs, and what goes into the bundle's training summary.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from exitwise.datasets import CHANNEL_OPTIONS, DEFAULT_HELDOUT
from exitwise.datasets.folder import DEFAULT_TEST_FRACTION
from exitwise.errors import ExitwiseError


class RecipeError(ExitwiseError):
    """A recipe that cannot be read or does not validate."""


AUTO = "auto"  # data.image_size measured from the folder's training images
IMAGE_SIZES = (16, 512)  # an explicit data.image_size
DEFAULT_HELDOUT_FRACTION = 0.1
FOLDER_ONLY = ("image_size", "channels", "mean", "std", "test_fraction")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Section):
    preset: str = Field(min_length=1)  # a preset (or architecture) name known to create_model
    kwargs: dict[str, Any] = Field(default_factory=dict)  # overrides of the preset's arguments
    # he: He-normal everywhere (the builders' own); original: what the original code ran
    # (MSDNet-PyTorch: PyTorch's defaults everywhere; RANet-pytorch: its first layer's).
    init: Literal["he", "original"] = "he"


class DataSpec(_Section):
    dataset: Literal["fashion-mnist", "cifar10", "cifar100", "imagenet", "folder"]
    root: str | None = None  # None: the data set's default location (Fashion-MNIST only)
    heldout_size: int | None = Field(default=None, ge=1)  # None: 5,000 (32x32) / 50,000 (ImageNet)
    # Held-out size as a share of the training split, clamped to [heldout_min, heldout_max] and to
    # half the split (the default for folder data sets: 0.1).
    heldout_fraction: float | None = Field(default=None, gt=0, lt=1)
    heldout_min: int = Field(default=100, ge=1)
    heldout_max: int = Field(default=5000, ge=1)
    split_seed: int = 0  # seeds the held-out split and the subset (kept apart from `seed`)
    train_subset: int | None = Field(default=None, ge=1)  # train on this many images only
    augment: bool = True
    workers: int = Field(default=8, ge=0)  # loader processes for image folders (ImageNet)
    # Folder data sets only (the named ones have a fixed preprocessing), except channels: 3 for
    # Fashion-MNIST (the grey channel replicated, for the 3-channel CIFAR architectures):
    # The input size in pixels (16-512), or auto (None: auto): measured from the folder's
    # training images, see training.folder_data.auto_image_size.
    image_size: int | Literal["auto"] | None = None
    channels: Literal[1, 3] | None = None  # None: 3 (folder), the data set's own (named sets)
    mean: list[float] | None = None  # None: computed on the training images
    std: list[float] | None = None
    test_fraction: float | None = Field(default=None, gt=0, lt=1)  # without val/; None: 0.1
    max_memory_gb: float = Field(default=8.0, gt=0)  # decoded images are held in memory

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size(cls, value: Any) -> Any:
        low, high = IMAGE_SIZES
        if value is None or value == AUTO:
            return value
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole:
            raise ValueError(
                f"must be auto or a whole number of pixels ({low}-{high}), not {value!r}"
            )
        if not low <= value <= high:
            raise ValueError(
                f"{value:g} pixels is outside {low}-{high} (or auto: the folder's size)"
            )
        return int(value)

    @model_validator(mode="after")
    def _folder_keys(self) -> DataSpec:
        if self.dataset != "folder":
            given = [k for k in FOLDER_ONLY if getattr(self, k) is not None]
            if self.channels in CHANNEL_OPTIONS.get(self.dataset, ()):
                given.remove("channels")  # e.g. Fashion-MNIST as 3-channel input
            elif given == ["channels"] and CHANNEL_OPTIONS.get(self.dataset):
                options = " or ".join(map(str, CHANNEL_OPTIONS[self.dataset]))
                raise ValueError(f"channels: {self.dataset} is read with {options} channels")
            if given:
                raise ValueError(
                    f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to folder data "
                    f"sets; {self.dataset} has a fixed preprocessing"
                )
            return self
        if self.root is None:
            raise ValueError("a folder data set needs data.root (the directory holding train/)")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != self.folder_channels:
                raise ValueError(f"{key} needs {self.folder_channels} value(s), one per channel")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError("std values must be positive")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then both are computed)")
        if self.heldout_min > self.heldout_max:
            raise ValueError("heldout_min must not exceed heldout_max")
        return self

    @property
    def fixed_image_size(self) -> int | None:
        """The recipe's input size, or None when it is measured from the folder (auto)."""
        return self.image_size if isinstance(self.image_size, int) else None

    @property
    def folder_channels(self) -> int:
        return self.channels or 3

    @property
    def folder_test_fraction(self) -> float:
        return self.test_fraction or DEFAULT_TEST_FRACTION

    @property
    def resolved_heldout_size(self) -> int:
        """The held-out size of a named data set (a folder's depends on its size)."""
        return self.heldout_size or DEFAULT_HELDOUT[self.dataset]

    def heldout_count(self, n_train: int) -> int:
        """Images held out of a training split of ``n_train`` images."""
        if self.heldout_size is not None:
            return self.heldout_size
        if self.heldout_fraction is None and self.dataset != "folder":
            return DEFAULT_HELDOUT[self.dataset]
        share = round((self.heldout_fraction or DEFAULT_HELDOUT_FRACTION) * n_train)
        size = min(max(share, self.heldout_min), self.heldout_max)
        return max(1, min(size, n_train // 2))  # training keeps at least half

    def heldout_rule_note(self, n_train: int) -> str | None:
        """One line when the held-out rule (at least ``heldout_min``, at most ``heldout_max`` and
        half the split) changes the size the fraction asks for; None when it does not."""
        if self.heldout_size is not None:
            return None
        if self.heldout_fraction is None and self.dataset != "folder":
            return None
        fraction = self.heldout_fraction or DEFAULT_HELDOUT_FRACTION
        asked = round(fraction * n_train)
        used = self.heldout_count(n_train)
        if used == asked:
            return None
        default = " (the default)" if self.heldout_fraction is None else ""
        steps = []
        if asked < self.heldout_min:
            steps.append(
                f"raised to data.heldout_min = {self.heldout_min} so that calibration has enough"
            )
        elif asked > self.heldout_max:
            steps.append(f"capped at data.heldout_max = {self.heldout_max}")
        if used < min(max(asked, self.heldout_min), self.heldout_max):
            steps.append("capped at half of them, so that training keeps the other half")
        share = "half" if used == n_train // 2 else f"{used / n_train:.0%}"
        return (
            f"held-out split: {used} of the {n_train} training images ({share}), not the {asked} "
            f"that data.heldout_fraction {fraction:g}{default} asks for: {', then '.join(steps)}; "
            f"{n_train - used} are left to train on (data.heldout_size sets the number)"
        )


class OptimSpec(_Section):
    lr: float = Field(default=0.1, gt=0)  # for the global batch
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)  # epochs (multistep)
    gamma: float = Field(default=0.1, gt=0)  # multistep factor
    warmup_epochs: float = Field(default=0.0, ge=0)  # linear warm-up, then the schedule
    warmup_start: float = Field(default=0.1, gt=0, le=1)  # warm-up starts at lr * this
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)  # on the training losses

    @model_validator(mode="after")
    def _milestones(self) -> OptimSpec:
        if self.milestones != sorted(self.milestones) or any(m <= 0 for m in self.milestones):
            raise ValueError("milestones must be positive epochs in increasing order")
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("the multistep schedule needs milestones (epochs)")
        return self


class MetaSpec(_Section):
    """The weight-prediction network and its meta step (used when weighting is ``l2w``)."""

    input: Literal["loss", "conf", "both"] = "loss"
    hidden_size: int = Field(default=500, ge=1)
    num_layers: int = Field(default=1, ge=1)
    norm: Literal["mat", "col", "row"] = "col"
    epsilon: float = Field(default=0.8, ge=0)
    target_p_index: int = Field(default=15, ge=1)  # q = target_p_index / 20
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    interval: int = Field(default=1, ge=1)  # update the WPN every this many loader batches
    # How d(meta loss)/d(WPN) is computed; both give the same gradient (see training/meta.py).
    gradient: Literal["forward", "double-backward"] = "forward"


class EvalSpec(_Section):
    batch_size: int = Field(default=500, ge=1)
    test: bool = True  # also report per-exit accuracy on the test split
    every_epochs: int = Field(default=0, ge=0)  # held-out accuracy every N epochs (0: at the end)


class CheckpointSpec(_Section):
    every_steps: int = Field(default=0, ge=0)  # also every N loader batches (0: epoch ends only)


class LogSpec(_Section):
    every_steps: int = Field(default=1, ge=1)  # train_log.jsonl / TensorBoard record interval
    tensorboard: bool = True
    progress: Literal["auto", "bar", "lines", "none"] = "auto"  # auto: a bar on a terminal
    print_every_s: float = Field(default=10.0, gt=0)  # plain progress lines at most this often


class Recipe(_Section):
    name: str | None = None  # bundle name (default: the output directory's name)
    model: ModelSpec
    data: DataSpec
    weighting: Literal["l2w", "uniform"] = "l2w"
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)  # global loader batch, split into halves on every process
    optim: OptimSpec = Field(default_factory=OptimSpec)
    meta: MetaSpec = Field(default_factory=MetaSpec)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of the forward passes
    channels_last: bool = False
    deterministic: bool = False  # deterministic CUDA kernels (CPU kernels already are)
    # Intra-op threads on a CPU (None: PyTorch's default, one per core). 1 is the robust choice
    # on a machine shared with other busy processes (see docs/training.md).
    cpu_threads: int | None = Field(default=None, ge=1)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    log: LogSpec = Field(default_factory=LogSpec)

    @model_validator(mode="after")
    def _even_batch(self) -> Recipe:
        if self.batch_size % 2:
            raise ValueError("batch_size must be even (each batch is split into two halves)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
