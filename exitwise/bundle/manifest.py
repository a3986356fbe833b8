"""The bundle's ``manifest.json``: what the model is, how to feed it, what it costs, its origin."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..datasets.folder import FolderSource
from ..preprocess import Preprocessing

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
HELDOUT_FILE = "heldout_indices.json"
CALIBRATION_FILE = "calibration.json"
ONNX_DIR = "onnx"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExitInfo(_Strict):
    exit: int = Field(ge=1)  # 1-based
    mflops: float = Field(ge=0)  # cumulative multiply-adds, millions
    params_m: float = Field(ge=0)  # cumulative parameters, millions


class WeightsInfo(_Strict):
    file: str = WEIGHTS_FILE
    format: Literal["safetensors"] = "safetensors"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class HeldOutSplit(_Strict):
    """A seeded subset of the training set kept for calibration: never trained on or augmented."""

    dataset: str  # data set name, e.g. "fashion-mnist"
    source_split: str = "train"  # the split the indices point into
    size: int = Field(ge=1)
    seed: int
    file: str = HELDOUT_FILE  # JSON {"indices": [...]}
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of the indices as little-endian int64


class TrainingSummary(BaseModel):
    """What the trainer reports; further keys (wall time, images/s, ...) are kept as given."""

    model_config = ConfigDict(extra="allow", frozen=True)

    weighting: str | None = None  # "l2w" or "uniform"
    epochs: int | None = None
    seed: int | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)  # the resolved recipe
    heldout_exit_accuracy: list[float] | None = None  # top-1 %, per exit, on the held-out split


class Manifest(_Strict):
    format_version: int
    name: str = Field(min_length=1)
    created: str  # ISO 8601, UTC
    exitwise_version: str
    arch: str
    arch_kwargs: dict[str, Any]
    preset: str | None = None
    num_classes: int = Field(ge=2)
    class_names: list[str]
    dataset: str | None = None
    preprocessing: Preprocessing
    exits: list[ExitInfo] = Field(min_length=1)
    weights: WeightsInfo
    heldout: HeldOutSplit | None = None
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    # A ``folder`` data set: where it was and how it was split (None for the named data sets).
    folder: FolderSource | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if [e.exit for e in self.exits] != list(range(1, len(self.exits) + 1)):
            raise ValueError("exits must be numbered 1..K in order")
        acc = self.training.heldout_exit_accuracy
        if acc is not None and len(acc) != len(self.exits):
            raise ValueError("training.heldout_exit_accuracy needs one value per exit")
        costs = [e.mflops for e in self.exits]
        if costs != sorted(costs):
            raise ValueError("cumulative exit MFLOPs must not decrease")
        return self

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def exit_mflops(self) -> list[float]:
        return [e.mflops for e in self.exits]
