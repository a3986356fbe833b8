"""The export's small parts, without exporting: directory publishing, the decision-parity rule,
the manifest schema, the parity images' fallback, and device resolution."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from exitwise.devices import DeviceError
from exitwise.devices import resolve_device as core_resolve
from exports import publish as publish_module
from exports.manifest import TensorSpec
from exports.parity import _decision_parity, load_parity_images
from exports.publish import publish, staging_directory
from tests.export_helpers import random_bundle, thresholds_for_q

# --- publishing a directory ------------------------------------------------------------------


def _fill(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(text)


def _read(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in directory.iterdir()}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_publish_replaces_the_whole_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    calls: list[bool] = []
    real = publish_module._exchange

    def spy(a: Path, b: Path) -> bool:
        calls.append(real(a, b) if exchange else False)
        return calls[-1]

    monkeypatch.setattr(publish_module, "_exchange", spy)
    target = tmp_path / "onnx"
    target.mkdir()
    _fill(target, {"a.onnx": "old a", "old-only.txt": "old"})
    with staging_directory(target) as staged:
        assert staged.parent == tmp_path and staged.name.startswith(".onnx.tmp-")
        _fill(staged, {"a.onnx": "new a", "b.onnx": "new b"})
        publish(staged, target)
    assert _read(target) == {"a.onnx": "new a", "b.onnx": "new b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]
    if exchange and sys.platform.startswith("linux"):
        assert calls == [True]  # one atomic swap


def test_publish_creates_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "onnx"
    with staging_directory(target) as staged:
        _fill(staged, {"m.json": "{}"})
        publish(staged, target)
    assert _read(target) == {"m.json": "{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_failure_before_publish_leaves_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "onnx"
    target.mkdir()
    _fill(target, {"a.onnx": "old"})
    with pytest.raises(RuntimeError), staging_directory(target) as staged:
        _fill(staged, {"a.onnx": "half-writ"})
        raise RuntimeError("export failed")
    assert _read(target) == {"a.onnx": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_staging_removes_leftovers_of_interrupted_runs(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".onnx.tmp-{int(dead.stdout)}-abc"  # its process has exited
    legacy = tmp_path / ".onnx.tmp-crashed"
    running = tmp_path / f".onnx.tmp-{os.getpid()}-xyz"  # a concurrent export, still running
    for d in (stale, legacy, running):
        d.mkdir()
        _fill(d, {"stage_1.onnx": "partial"})
    with staging_directory(tmp_path / "onnx") as staged:
        assert not stale.exists() and not legacy.exists() and running.exists()
        assert staged.name.startswith(f".onnx.tmp-{os.getpid()}-")


# --- the decision-parity rule ------------------------------------------------------------------


def test_decision_parity_counts_borderline_images() -> None:
    thresholds = np.array([0.8, 0.6, -math.inf])
    conf_t = np.array(
        [
            [0.9, 0.5, 0.5],  # exits at 1 in both
            [0.8, 0.5, 0.5],  # sits exactly on threshold 1 ...
            [0.5, 0.7, 0.5],  # exits at 2 in both
            [0.5, 0.65, 0.5],  # clearly above threshold 2 in torch ...
        ]
    )
    conf_o = conf_t.copy()
    conf_o[1, 0] = 0.8 - 1e-9  # ... and falls just below it: borderline
    conf_o[3, 1] = 0.55  # ... clearly below in onnx: a real disagreement
    p = _decision_parity("q1", thresholds, conf_t, conf_o, band=1e-6)
    assert (p.disagreements, p.borderline) == (2, 1)
    assert p.agreement == 0.5
    same = _decision_parity("q1", thresholds, conf_t, conf_t.copy(), band=1e-6)
    assert (same.disagreements, same.borderline, same.agreement) == (0, 0, 1.0)


def test_thresholds_helper_follows_the_calibration_rule() -> None:
    rng = np.random.default_rng(0)
    conf = rng.random((1000, 4))
    thr = thresholds_for_q(conf, 1.0)  # a quarter of the images at each exit
    assert thr[-1] is None and all(t is not None for t in thr[:-1])
    assert (conf[:, 0] >= thr[0]).sum() == 250


# --- manifest schema ---------------------------------------------------------------------------


def test_tensor_spec_needs_a_leading_batch_axis() -> None:
    spec = TensorSpec(name="state_in_0", dtype="float32", shape=["batch", 3, 32, 32])
    assert spec.feature_shape == (3, 32, 32)
    with pytest.raises(ValidationError, match="first axis"):
        TensorSpec(name="x", dtype="float32", shape=[1, 3, 32, 32])
    with pytest.raises(ValidationError, match="fixed size"):
        TensorSpec(name="x", dtype="float32", shape=["batch", "channels"])


# --- parity images -----------------------------------------------------------------------------


def test_parity_images_fall_back_to_random_with_one_note(tmp_path: Path) -> None:
    bundle = random_bundle(tmp_path / "b", "msdnet-fmnist", n_train=600)
    notes: list[str] = []
    images = load_parity_images(bundle, 10, tmp_path / "no-data", note=notes.append)
    assert images.source == "random" and images.pixels.shape == (10, 1, 28, 28)
    assert images.pixels.dtype == torch.uint8
    assert len(notes) == 1 and notes[0].startswith(
        "parity on 10 random images: the fashion-mnist data set is not available ("
    )
    again = load_parity_images(bundle, 10, tmp_path / "no-data")
    assert torch.equal(again.pixels, images.pixels)  # seeded: the same images every time


# --- devices -------------------------------------------------------------------------------------


def test_device_resolution() -> None:
    def _resolve_device(name: str, require_gpu: bool) -> torch.device:
        return core_resolve(name, require_gpu=require_gpu)

    assert _resolve_device("cpu", False) == torch.device("cpu")
    with pytest.raises(DeviceError, match="cpu, cuda"):
        _resolve_device("mps", False)
    if torch.cuda.is_available():
        assert _resolve_device("auto", True) == torch.device("cuda", 0)
        assert _resolve_device("cuda", False) == torch.device("cuda", 0)
    else:
        assert _resolve_device("auto", False) == torch.device("cpu")
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            _resolve_device("cuda:1", False)
