"""The onnxruntime StageRunner: a drop-in for the PyTorch stages (row dropping between stages
included), IOBinding, and every refusal the server relies on."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exitwise.bundle import load_bundle, save_bundle
from exitwise.datasets import EvalImages, open_dataset
from exitwise.devices import DeviceError
from exitwise.fileio import sha256_bytes
from exitwise.models import select_rows
from exitwise.preprocess import normalize
from exitwise.runtime import StageRunner
from exports import (
    CorruptGraphError,
    ExportMismatchError,
    MissingExportError,
    OnnxBundleError,
    OnnxUnavailableError,
    load_onnx_runner,
)
from tests.export_helpers import assert_same_early_exit, early_exit, tiny_exported, torch_runner

NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.getbasetemp() / "export-tiny"
    base.mkdir(exist_ok=True)
    return tiny_exported(base)


@pytest.fixture(scope="module")
def images(exported: tuple[Path, Path]) -> torch.Tensor:
    """Test-split images (not the held-out ones the thresholds were solved on), normalised."""
    bundle = load_bundle(exported[0])
    spec = bundle.manifest.preprocessing
    view = EvalImages(open_dataset("fashion-mnist", "test", exported[1]), spec)
    return normalize(torch.stack([view[i][0] for i in range(150)]), spec)


@pytest.fixture
def copy(exported: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported[0], tmp_path / "bundle"))


def test_runner_is_a_stage_runner(exported: tuple[Path, Path], caplog, capfd) -> None:
    with caplog.at_level(logging.INFO, logger="exports.runtime"):
        runner = load_onnx_runner(load_bundle(exported[0]))
    assert isinstance(runner, StageRunner)
    assert runner.backend == "onnx" and runner.num_exits == 4
    if NO_GPU:
        assert runner.device == torch.device("cpu")
        assert runner.provider == "CPUExecutionProvider" and not runner.use_iobinding
    # The provider is logged once; onnxruntime itself says nothing.
    lines = [r.getMessage() for r in caplog.records if r.name == "exports.runtime"]
    assert len(lines) == 1 and runner.provider in lines[0]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize("use_iobinding", [False, True], ids=["run", "iobinding"])
def test_early_exit_matches_torch(
    exported: tuple[Path, Path], images: torch.Tensor, use_iobinding: bool
) -> None:
    bundle = load_bundle(exported[0])
    runner = load_onnx_runner(bundle, "cpu", use_iobinding=use_iobinding)
    assert runner.use_iobinding is use_iobinding
    reference = torch_runner(bundle.load_model())
    points = bundle.calibration().operating_points
    for point in points:
        thresholds = torch.from_numpy(point.threshold_array())
        sizes = ((1, 6), (7, 21), (64, 64)) if point == points[1] else ((64, 64),)
        for batch, count in sizes:
            for start in range(0, count, batch):  # several batches of each size
                x = images[start : start + batch]
                want = early_exit(reference, x, thresholds)
                got = early_exit(runner, x, thresholds)
                assert_same_early_exit(got, want, thresholds, atol=1e-4)
    # Different exits really happened (the test exercises row dropping).
    point = bundle.calibration().point("q1")
    out = early_exit(runner, images, torch.from_numpy(point.threshold_array()))
    assert len(set(out.exits.tolist())) >= 3


def test_iobinding_equals_plain_run(exported: tuple[Path, Path], images: torch.Tensor) -> None:
    bundle = load_bundle(exported[0])
    plain = load_onnx_runner(bundle, "cpu", use_iobinding=False)
    bound = load_onnx_runner(bundle, "cpu", use_iobinding=True)
    a, b = plain.initial_state(images[:12]), bound.initial_state(images[:12])
    for k in range(plain.num_exits):
        a, la = plain.run_stage(k, a)
        b, lb = bound.run_stage(k, b)
        assert la.dtype == lb.dtype == torch.float32 and la.shape == lb.shape
        assert torch.allclose(la, lb, rtol=0, atol=1e-6)
        assert all(torch.allclose(x, y, rtol=0, atol=1e-5) for x, y in zip(a, b, strict=True))
        # Drop every other row as the engine would (select_rows on our own outputs).
        keep = torch.arange(0, a[0].shape[0], 2) if a else torch.arange(0)
        a, b = select_rows(a, keep), select_rows(b, keep)


def test_stage_input_checks(exported: tuple[Path, Path], images: torch.Tensor) -> None:
    runner = load_onnx_runner(load_bundle(exported[0]), "cpu")
    with pytest.raises(ValueError, match="expected images of shape"):
        runner.initial_state(torch.zeros(2, 3, 32, 32))
    state = runner.initial_state(images[:2])
    with pytest.raises(ValueError, match="stage 2 takes"):
        runner.run_stage(1, state)
    # A batch with no rows left keeps its shapes and skips the session.
    empty, logits = runner.run_stage(0, [state[0][:0]])
    assert logits.shape == (0, 10) and all(t.shape[0] == 0 for t in empty)
    # float64 or non-contiguous inputs are converted, not refused.
    x = images[:3].double().transpose(2, 3).contiguous().transpose(2, 3)
    _, l64 = runner.run_stage(0, runner.initial_state(x))
    _, l32 = runner.run_stage(0, runner.initial_state(images[:3]))
    assert torch.allclose(l64, l32, atol=1e-6)


# --- refusals ------------------------------------------------------------------------------------


def _rewrite_manifest(bundle_dir: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = bundle_dir / "onnx" / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_refuses_bundle_without_export(copy: Path) -> None:
    shutil.rmtree(copy / "onnx")
    with pytest.raises(MissingExportError, match=r"has no ONNX export; run `exitwise export"):
        load_onnx_runner(load_bundle(copy))


def test_refuses_graphs_of_other_weights(copy: Path) -> None:
    bundle = load_bundle(copy)
    model = bundle.load_model()
    with torch.no_grad():
        model.stages[0].head.linear.bias.add_(0.5)
    m = bundle.manifest
    save_bundle(
        copy, model, name=m.name, class_names=m.class_names, preprocessing=m.preprocessing
    )  # new weights, the old onnx/ stays
    with pytest.raises(ExportMismatchError, match="exported from other weights"):
        load_onnx_runner(load_bundle(copy))


def test_refuses_truncated_graph(copy: Path) -> None:
    path = copy / "onnx" / "stage_2.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptGraphError, match=r"stage_2.onnx: sha256 does not match"):
        load_onnx_runner(load_bundle(copy))


def test_refuses_missing_stage_file(copy: Path) -> None:
    (copy / "onnx" / "stage_4.onnx").unlink()
    with pytest.raises(CorruptGraphError, match=r"stage_4.onnx: stage file is missing"):
        load_onnx_runner(load_bundle(copy))


def test_refuses_graph_onnxruntime_cannot_load(copy: Path) -> None:
    garbage = b"this is not an onnx graph" * 10
    (copy / "onnx" / "stage_1.onnx").write_bytes(garbage)

    def edit(data: dict) -> None:  # type: ignore[type-arg]
        data["stages"][0].update(sha256=sha256_bytes(garbage), size_bytes=len(garbage))

    _rewrite_manifest(copy, edit)
    with pytest.raises(CorruptGraphError, match="onnxruntime cannot load the graph"):
        load_onnx_runner(load_bundle(copy))


def test_refuses_graph_that_is_not_the_manifests(copy: Path) -> None:
    # Stage 3's graph under stage 2's name (with a matching sha256): the wrong inputs/outputs.
    onnx_dir = copy / "onnx"
    data = (onnx_dir / "stage_3.onnx").read_bytes()
    (onnx_dir / "stage_2.onnx").write_bytes(data)

    def edit(manifest: dict) -> None:  # type: ignore[type-arg]
        manifest["stages"][1].update(sha256=sha256_bytes(data), size_bytes=len(data))

    _rewrite_manifest(copy, edit)
    with pytest.raises(CorruptGraphError, match="inputs/outputs differ"):
        load_onnx_runner(load_bundle(copy))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format_version": 1, "stages": [', "not valid JSON"),
        (b'{"format_version": 99}', "unknown ONNX export format version 99"),
        (b'{"format_version": 1, "stages": []}', "invalid ONNX manifest"),
    ],
)
def test_refuses_bad_manifest(copy: Path, content: bytes, message: str) -> None:
    (copy / "onnx" / "manifest.json").write_bytes(content)
    with pytest.raises(OnnxBundleError, match=message):
        load_onnx_runner(load_bundle(copy))


@pytest.mark.skipif(not NO_GPU, reason="checks the refusals on a machine without a GPU")
def test_gpu_refusals_without_gpu(exported: tuple[Path, Path]) -> None:
    bundle = load_bundle(exported[0])
    with pytest.raises(DeviceError, match=r"required \(--require-gpu\) but no CUDA GPU"):
        load_onnx_runner(bundle, "auto", require_gpu=True)
    with pytest.raises(DeviceError, match="no CUDA GPU is available"):
        load_onnx_runner(bundle, "cuda")
    with pytest.raises(DeviceError, match="GPU is required"):
        load_onnx_runner(bundle, "cpu", require_gpu=True)


def test_refuses_unknown_device(exported: tuple[Path, Path]) -> None:
    bundle = load_bundle(exported[0])
    with pytest.raises(DeviceError, match="unknown device"):
        load_onnx_runner(bundle, "gpu0")
    with pytest.raises(DeviceError, match="unsupported device 'meta'"):
        load_onnx_runner(bundle, "meta")


def test_onnxruntime_missing(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(OnnxUnavailableError, match=r"pip install 'exitwise\[onnx\]'"):
        load_onnx_runner(load_bundle(exported[0]))


def test_import_is_light() -> None:
    # The package imports neither onnx nor onnxruntime until they are used.
    code = "import exports, sys; print(any(m.startswith('onnx') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
