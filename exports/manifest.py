"""``bundle/onnx/manifest.json``: which graphs make up the export and what they were checked for.

The manifest binds the export to the bundle's weights (their sha256), lists one graph per stage
with its own sha256 and the names, dtypes and shapes of its inputs and outputs (the batch axis
is the symbolic ``"batch"``), and records how the graphs were made (exporter, opset, versions)
and how closely they reproduce PyTorch (the parity figures).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from exitwise.bundle import ONNX_DIR, Bundle

from .errors import ExportMismatchError, MissingExportError, OnnxBundleError

ONNX_FORMAT_VERSION = 1
ONNX_MANIFEST_FILE = "manifest.json"
BATCH_AXIS = "batch"
LOGITS_NAME = "logits"

Dim = int | str  # a fixed size, or the symbolic batch axis


def state_in_name(i: int) -> str:
    return f"state_in_{i}"


def state_out_name(i: int) -> str:
    return f"state_out_{i}"


def stage_file_name(exit_: int) -> str:
    return f"stage_{exit_}.onnx"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str = Field(min_length=1)
    dtype: Literal["float32", "float16"]
    shape: list[Dim]  # shape[0] is always BATCH_AXIS

    @model_validator(mode="after")
    def _batch_first(self) -> TensorSpec:
        if not self.shape or self.shape[0] != BATCH_AXIS:
            raise ValueError(f"{self.name}: the first axis must be {BATCH_AXIS!r}")
        if any(not isinstance(d, int) or d < 1 for d in self.shape[1:]):
            raise ValueError(f"{self.name}: every axis but the batch axis must be a fixed size")
        return self

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape without the batch axis."""
        return tuple(int(d) for d in self.shape[1:])


class StageGraph(_Strict):
    exit: int = Field(ge=1)  # 1-based, as everywhere users look
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=1)
    inputs: list[TensorSpec] = Field(min_length=1)  # the incoming state, in order
    outputs: list[TensorSpec] = Field(min_length=1)  # the outgoing state, then the logits

    @property
    def state_outputs(self) -> list[TensorSpec]:
        return self.outputs[:-1]

    @property
    def logits(self) -> TensorSpec:
        return self.outputs[-1]


class Exporter(_Strict):
    name: str  # "torch.onnx.export(dynamo=True)"
    torch: str
    onnx: str
    onnxscript: str | None = None


class OperatingPointParity(_Strict):
    name: str
    agreement: float = Field(ge=0, le=1)  # share of images whose exit decision is the same
    borderline: int = Field(ge=0)  # disagreeing images whose confidences straddle a threshold
    disagreements: int = Field(ge=0)


class Parity(_Strict):
    """How the graphs, run in onnxruntime, compare with the PyTorch model, stage by stage."""

    inputs: Literal["heldout", "random"]  # real held-out images, or random pixels
    dataset: str | None = None
    images: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    provider: str  # the onnxruntime provider the check ran on
    onnxruntime: str
    max_abs_logits_diff: list[float]  # per exit
    prediction_agreement: list[float]  # per exit: share of images with the same arg-max class
    operating_points: list[OperatingPointParity] = Field(default_factory=list)
    # The targets the figures were held to (they depend on fp16).
    target_max_abs_logits_diff: float
    target_agreement: float
    decision_band: float  # a changed decision with a confidence gap below this is borderline
    passed: bool

    @property
    def worst_logits_diff(self) -> float:
        return max(self.max_abs_logits_diff)


class OnnxManifest(_Strict):
    format_version: int
    created: str
    exitwise_version: str
    bundle_name: str
    arch: str
    num_classes: int = Field(ge=2)
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    exporter: Exporter
    opset: int = Field(ge=1)
    fp16: bool
    batch_axis: str = BATCH_AXIS
    stages: list[StageGraph] = Field(min_length=1)
    parity: Parity

    @model_validator(mode="after")
    def _consistent(self) -> OnnxManifest:
        if [s.exit for s in self.stages] != list(range(1, len(self.stages) + 1)):
            raise ValueError("stages must be numbered 1..K in order")
        for prev, nxt in zip(self.stages, self.stages[1:], strict=False):
            if [(t.dtype, t.shape) for t in prev.state_outputs] != [
                (t.dtype, t.shape) for t in nxt.inputs
            ]:
                raise ValueError(f"stage {nxt.exit}'s inputs are not stage {prev.exit}'s state")
        if len(self.parity.max_abs_logits_diff) != len(self.stages):
            raise ValueError("parity needs one logits difference per stage")
        return self

    @property
    def num_exits(self) -> int:
        return len(self.stages)


def onnx_dir(bundle: Bundle) -> Path:
    return bundle.path / ONNX_DIR


def read_onnx_manifest(bundle: Bundle) -> OnnxManifest:
    """The bundle's ONNX manifest, checked against the bundle (weights, exits, classes).

    Only the manifest is read here; the stage files are checked when they are loaded.
    """
    directory = onnx_dir(bundle)
    path = directory / ONNX_MANIFEST_FILE
    if not directory.is_dir() or not path.is_file():
        raise MissingExportError(
            f"{directory}: the bundle has no ONNX export; run `exitwise export {bundle.path}`"
        )
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OnnxBundleError(f"{path}: not valid JSON (truncated or corrupted?)") from err
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != ONNX_FORMAT_VERSION:
        raise OnnxBundleError(
            f"{path}: unknown ONNX export format version {version!r} (this exitwise reads "
            f"version {ONNX_FORMAT_VERSION}); run `exitwise export` again"
        )
    try:
        manifest = OnnxManifest.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        raise OnnxBundleError(f"{path}: invalid ONNX manifest: {where}: {e['msg']}") from err
    if manifest.weights_sha256 != bundle.weights_sha256:
        raise ExportMismatchError(
            f"{directory}: exported from other weights (sha256 {manifest.weights_sha256[:12]}…, "
            f"the bundle's are {bundle.weights_sha256[:12]}…); run `exitwise export "
            f"{bundle.path}` again"
        )
    m = bundle.manifest
    if manifest.num_exits != m.num_exits or manifest.num_classes != m.num_classes:
        raise ExportMismatchError(
            f"{directory}: the export has {manifest.num_exits} exits and {manifest.num_classes} "
            f"classes, the bundle {m.num_exits} and {m.num_classes}; run `exitwise export` again"
        )
    return manifest
