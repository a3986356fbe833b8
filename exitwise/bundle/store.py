"""Saving and loading bundles: a directory with ``manifest.json`` + ``weights.safetensors``
(+ ``heldout_indices.json``, ``calibration.json``, ``onnx/``).

Loading checks everything it reads: the manifest's format version and schema, the weights'
sha256, the held-out indices' sha256, and that a calibration was made for these weights. Each
refusal is a :class:`BundleError` naming the file. Nothing is unpickled: weights are safetensors,
everything else is JSON. Saving writes each file atomically and the manifest last, so a bundle
is complete as soon as its manifest exists.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .. import __version__
from ..datasets.folder import FolderSource
from ..errors import BundleError, CalibrationMismatchError
from ..fileio import atomic_write_bytes, atomic_write_json, sha256_bytes
from ..flops import exit_costs
from ..models import EarlyExitNet, create_model
from ..preprocess import Preprocessing
from .calibration import CALIBRATION_FORMAT_VERSION, Calibration
from .manifest import (
    CALIBRATION_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    ExitInfo,
    HeldOutSplit,
    Manifest,
    TrainingSummary,
    WeightsInfo,
)


def indices_sha256(indices: Sequence[int] | np.ndarray) -> str:
    """sha256 of indices as little-endian int64: independent of how the file is formatted."""
    return sha256_bytes(np.asarray(indices, dtype="<i8").tobytes())


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Bundle:
    """A loaded (and verified) bundle. Weights are read on demand with :meth:`load_model`."""

    path: Path
    manifest: Manifest
    _calibration: Calibration | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def weights_sha256(self) -> str:
        return self.manifest.weights.sha256

    def build_model(self) -> EarlyExitNet:
        """The architecture with fresh weights (nothing read from disk)."""
        try:
            return create_model(self.manifest.arch, **self.manifest.arch_kwargs)
        except (TypeError, ValueError, KeyError) as err:
            raise BundleError(
                f"{self.path / MANIFEST_FILE}: cannot build the model: {err}"
            ) from err

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The verified weights."""
        path = self.path / self.manifest.weights.file
        data = _read(path)
        if sha256_bytes(data) != self.weights_sha256:
            raise BundleError(
                f"{path}: sha256 does not match the manifest (the file is truncated, corrupted "
                "or was replaced)"
            )
        try:
            return st_load(data)
        except (SafetensorError, ValueError) as err:
            raise BundleError(f"{path}: not a readable safetensors file: {err}") from err

    def load_model(self, device: str | torch.device = "cpu") -> EarlyExitNet:
        """The model with the bundle's weights, in eval mode, on ``device``."""
        model = self.build_model()
        try:
            model.load_state_dict(self.state_dict(), strict=True)
        except RuntimeError as err:
            raise BundleError(
                f"{self.path / self.manifest.weights.file}: weights do not fit the architecture "
                f"in the manifest: {str(err).splitlines()[0]}"
            ) from err
        return model.to(device).eval()

    def heldout_indices(self) -> np.ndarray:
        """The verified held-out indices (into the training split)."""
        split = self.manifest.heldout
        if split is None:
            raise BundleError(f"{self.path}: the bundle has no held-out split")
        path = self.path / split.file
        try:
            payload = json.loads(_read(path))
            indices = np.asarray(payload["indices"], dtype=np.int64)
        except (ValueError, KeyError, TypeError) as err:
            raise BundleError(f"{path}: not a valid held-out index file") from err
        if indices.ndim != 1 or indices_sha256(indices) != split.sha256:
            raise BundleError(f"{path}: sha256 does not match the manifest")
        return indices

    def verify(self) -> None:
        """Check every file the manifest names (weights, held-out split, calibration if any)."""
        self.state_dict()
        if self.manifest.heldout is not None:
            self.heldout_indices()
        if self.has_calibration:
            self.calibration()

    @property
    def has_calibration(self) -> bool:
        return (self.path / CALIBRATION_FILE).exists()

    def calibration(self) -> Calibration:
        """The verified calibration; refused when it was made for other weights."""
        if self._calibration is None:
            self._calibration = read_calibration(self.path, self.weights_sha256)
        return self._calibration


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: file is missing") from None
    except OSError as err:
        raise BundleError(f"{path}: cannot be read: {err.strerror}") from err


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "(top level)"
    return f"{where}: {e['msg']}"


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle's manifest (and the presence of its weights)."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory")
    manifest_path = root / MANIFEST_FILE
    raw = _read(manifest_path)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{manifest_path}: not valid JSON (truncated or corrupted?)") from err
    if not isinstance(data, dict):
        raise BundleError(f"{manifest_path}: not a bundle manifest")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: unknown bundle format version {version!r} "
            f"(this exitwise reads version {FORMAT_VERSION})"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        raise BundleError(f"{manifest_path}: invalid manifest: {_first_error(err)}") from err
    weights = root / manifest.weights.file
    if not weights.is_file():
        raise BundleError(f"{weights}: file is missing")
    return Bundle(path=root, manifest=manifest)


def save_bundle(
    path: str | Path,
    model: EarlyExitNet,
    *,
    name: str,
    class_names: Sequence[str],
    preprocessing: Preprocessing,
    preset: str | None = None,
    dataset: str | None = None,
    heldout: tuple[HeldOutSplit, Sequence[int] | np.ndarray] | None = None,
    training: TrainingSummary | dict[str, Any] | None = None,
    folder: FolderSource | None = None,
) -> Bundle:
    """Write ``model`` as a bundle into ``path`` (created if needed; other files are left alone).

    ``heldout`` is the split's description and its indices; the description's sha256 must be
    that of the indices (see :func:`indices_sha256`). Per-exit costs are measured here, so the
    manifest always describes the weights it sits beside.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata key only: safetensors writes the metadata map in hash order, which varies
    # between processes, and the same weights must always give the same sha256.
    weights = st_save(tensors, metadata={"format": "pt"})
    costs = exit_costs(model, preprocessing.input_size, preprocessing.channels)
    heldout_info = None
    if heldout is not None:
        heldout_info, indices = heldout
        if indices_sha256(indices) != heldout_info.sha256:
            raise ValueError("held-out split sha256 does not match its indices")
        if len(indices) != heldout_info.size:
            raise ValueError("held-out split size does not match its indices")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        created=utc_now(),
        exitwise_version=__version__,
        arch=model.arch,
        arch_kwargs=model.config_dict,
        preset=preset,
        num_classes=len(class_names),
        class_names=list(class_names),
        dataset=dataset,
        preprocessing=preprocessing,
        exits=[ExitInfo(exit=c.exit, mflops=c.mflops, params_m=c.params_m) for c in costs],
        weights=WeightsInfo(sha256=sha256_bytes(weights)),
        heldout=heldout_info,
        training=TrainingSummary.model_validate(training or {}),
        folder=folder,
    )
    atomic_write_bytes(root / WEIGHTS_FILE, weights)
    if heldout is not None and heldout_info is not None:
        atomic_write_json(root / heldout_info.file, {"indices": [int(i) for i in heldout[1]]})
    # A calibration made for earlier weights in this directory no longer applies.
    stale = root / CALIBRATION_FILE
    if stale.exists():
        stale.unlink()
    atomic_write_json(root / MANIFEST_FILE, manifest.model_dump(mode="json"))
    return Bundle(path=root, manifest=manifest)


def read_calibration(path: str | Path, weights_sha256: str) -> Calibration:
    """Read ``calibration.json`` of the bundle at ``path``; refuse one made for other weights."""
    file = Path(path) / CALIBRATION_FILE
    raw = _read(file)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{file}: not valid JSON (truncated or corrupted?)") from err
    if not isinstance(data, dict) or data.get("format_version") != CALIBRATION_FORMAT_VERSION:
        version = data.get("format_version") if isinstance(data, dict) else None
        raise BundleError(f"{file}: unknown calibration format version {version!r}")
    try:
        calibration = Calibration.model_validate(data)
    except ValidationError as err:
        raise BundleError(f"{file}: invalid calibration: {_first_error(err)}") from err
    if calibration.weights_sha256 != weights_sha256:
        raise CalibrationMismatchError(
            f"{file}: made for other weights (sha256 {calibration.weights_sha256[:12]}…, the "
            f"bundle's are {weights_sha256[:12]}…); run `exitwise calibrate` again"
        )
    return calibration


def write_calibration(bundle: Bundle, calibration: Calibration) -> None:
    """Write ``calibration.json`` atomically after checking it belongs to ``bundle``'s weights."""
    if calibration.weights_sha256 != bundle.weights_sha256:
        raise CalibrationMismatchError("calibration was computed for other weights")
    atomic_write_json(bundle.path / CALIBRATION_FILE, calibration.model_dump(mode="json"))
    bundle._calibration = calibration
