"""The bundle: round trip, each corruption refused with a message naming the file, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from exitwise.bundle import (
    CALIBRATION_FILE,
    HELDOUT_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Bundle,
    Calibration,
    HeldOutSplit,
    OperatingPoint,
    SplitResult,
    indices_sha256,
    load_bundle,
    save_bundle,
    utc_now,
    write_calibration,
)
from exitwise.errors import BundleError, CalibrationMismatchError
from exitwise.fileio import atomic_write_bytes, sha256_file
from exitwise.models import create_model
from exitwise.preprocess import FASHION_MNIST

CLASSES = [f"class-{i}" for i in range(10)]


def _save(path: Path, seed: int = 0) -> Bundle:
    torch.manual_seed(seed)
    model = create_model("msdnet-fmnist", channels=4, growth_rate=2, head_channels=8)
    indices = np.random.default_rng(seed).permutation(100)[:20]
    split = HeldOutSplit(
        dataset="fashion-mnist", size=20, seed=seed, sha256=indices_sha256(indices)
    )
    return save_bundle(
        path,
        model,
        name="tiny",
        class_names=CLASSES,
        preprocessing=FASHION_MNIST,
        preset="msdnet-fmnist",
        dataset="fashion-mnist",
        heldout=(split, indices),
        training={"weighting": "uniform", "epochs": 0, "note": "kept"},
    )


def _calibration(bundle: Bundle, sha: str | None = None) -> Calibration:
    k = bundle.manifest.num_exits
    result = SplitResult(
        accuracy=50.0, mflops=1.0, exit_fractions=[1.0] + [0.0] * (k - 1), images=20
    )
    point = OperatingPoint(
        name="q=1.00", q=1.0, thresholds=[0.5] * (k - 1) + [None], heldout=result
    )
    return Calibration(
        weights_sha256=sha or bundle.weights_sha256,
        heldout_sha256=bundle.manifest.heldout.sha256,  # type: ignore[union-attr]
        created=utc_now(),
        exit_mflops=bundle.manifest.exit_mflops,
        operating_points=[point],
        default_operating_point="q=1.00",
    )


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return _save(tmp_path / "b")


def test_round_trip(bundle: Bundle) -> None:
    loaded = load_bundle(bundle.path)
    assert loaded.manifest == bundle.manifest
    assert loaded.manifest.training.model_extra == {"note": "kept"}
    model = loaded.load_model()
    assert not model.training
    torch.manual_seed(0)
    original = create_model("msdnet-fmnist", channels=4, growth_rate=2, head_channels=8).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        for a, b in zip(original(x), model(x), strict=True):
            torch.testing.assert_close(a, b)
    assert loaded.manifest.weights.sha256 == sha256_file(bundle.path / WEIGHTS_FILE)
    assert loaded.heldout_indices().shape == (20,)
    assert [e.exit for e in loaded.manifest.exits] == [1, 2, 3, 4]
    loaded.verify()


def test_manifest_is_plain_json(bundle: Bundle) -> None:
    data = json.loads((bundle.path / MANIFEST_FILE).read_text())
    assert data["format_version"] == 1
    assert data["arch"] == "msdnet"
    assert data["preprocessing"]["pad"] == 2


def test_missing_directory_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle directory"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"manifest\.json: file is missing"):
        load_bundle(tmp_path / "empty")


def test_missing_weights(bundle: Bundle) -> None:
    (bundle.path / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match=r"weights\.safetensors: file is missing"):
        load_bundle(bundle.path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "replace"])
def test_damaged_weights_are_refused(bundle: Bundle, damage: str) -> None:
    path = bundle.path / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-10] ^= 0xFF
    else:
        other = _save(bundle.path.parent / "other", seed=1)
        data = bytearray((other.path / WEIGHTS_FILE).read_bytes())
    path.write_bytes(bytes(data))
    loaded = load_bundle(bundle.path)  # the manifest alone is fine
    with pytest.raises(BundleError, match=r"weights\.safetensors: sha256 does not match"):
        loaded.load_model()


def test_truncated_manifest(bundle: Bundle) -> None:
    path = bundle.path / MANIFEST_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(bundle.path)


def test_unknown_format_version(bundle: Bundle) -> None:
    path = bundle.path / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="unknown bundle format version 99"):
        load_bundle(bundle.path)


def test_tampered_manifest_field(bundle: Bundle) -> None:
    path = bundle.path / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["class_names"] = data["class_names"][:3]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"manifest\.json: invalid manifest: .*class names"):
        load_bundle(bundle.path)


def test_manifest_that_does_not_fit_the_weights(bundle: Bundle) -> None:
    path = bundle.path / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["arch_kwargs"]["growth_rate"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="weights do not fit the architecture"):
        load_bundle(bundle.path).load_model()


def test_tampered_heldout_indices(bundle: Bundle) -> None:
    path = bundle.path / HELDOUT_FILE
    data = json.loads(path.read_text())
    data["indices"][0] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"heldout_indices\.json: sha256 does not match"):
        load_bundle(bundle.path).heldout_indices()
    path.unlink()
    with pytest.raises(BundleError, match=r"heldout_indices\.json: file is missing"):
        load_bundle(bundle.path).verify()


def test_calibration_round_trip_and_mismatch(bundle: Bundle) -> None:
    write_calibration(bundle, _calibration(bundle))
    loaded = load_bundle(bundle.path)
    assert loaded.calibration().default_operating_point == "q=1.00"
    thr = loaded.calibration().operating_points[0].threshold_array()
    assert thr[-1] == -np.inf and thr[0] == 0.5
    # A calibration written for other weights is refused on load ...
    with pytest.raises(CalibrationMismatchError):
        write_calibration(bundle, _calibration(bundle, sha="0" * 64))
    data = json.loads((bundle.path / CALIBRATION_FILE).read_text())
    data["weights_sha256"] = "0" * 64
    (bundle.path / CALIBRATION_FILE).write_text(json.dumps(data))
    with pytest.raises(CalibrationMismatchError, match="made for other weights"):
        load_bundle(bundle.path).calibration()


def test_retraining_into_the_same_directory_drops_the_stale_calibration(bundle: Bundle) -> None:
    write_calibration(bundle, _calibration(bundle))
    again = _save(bundle.path, seed=3)
    assert not again.has_calibration


def test_atomic_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old contents")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk went away"):
        atomic_write_bytes(target, b"new contents that never land")
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_interrupted_bundle_save_keeps_the_old_bundle(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If saving new weights is interrupted before the manifest lands, the old bundle still loads
    or is refused as a whole, never half-new; no temporary files remain."""
    before = (bundle.path / MANIFEST_FILE).read_bytes()
    import exitwise.bundle.store as store

    calls = {"n": 0}
    real = store.atomic_write_json

    def fail_on_manifest(path: Path, obj: object) -> None:
        calls["n"] += 1
        if Path(path).name == MANIFEST_FILE:
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(store, "atomic_write_json", fail_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        _save(bundle.path, seed=5)
    monkeypatch.undo()
    assert (bundle.path / MANIFEST_FILE).read_bytes() == before
    # The weights changed underneath the old manifest: the mismatch is detected, not used.
    with pytest.raises(BundleError, match="sha256 does not match"):
        load_bundle(bundle.path).load_model()
    assert not [p for p in bundle.path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_gives_the_usual_file_mode(tmp_path: Path) -> None:
    """Files are readable by others as with open(), not 0600 as mkstemp makes them."""
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_same_weights_same_sha256_in_every_process(tmp_path: Path) -> None:
    """Identical weights give a byte-identical weights file, whatever the hash seed."""
    import subprocess
    import sys

    script = (
        "import sys, torch; from exitwise.bundle import save_bundle; "
        "from exitwise.models import create_model; from exitwise.preprocess import FASHION_MNIST; "
        "torch.manual_seed(0); m = create_model('msdnet-fmnist', channels=4, growth_rate=2, "
        "head_channels=8); print(save_bundle(sys.argv[1], m, name='x', "
        "class_names=[str(i) for i in range(10)], preprocessing=FASHION_MNIST).weights_sha256)"
    )
    shas = set()
    for seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / seed)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"},
        )
        shas.add(out.stdout.strip())
    assert len(shas) == 1
