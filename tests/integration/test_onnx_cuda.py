"""The CUDA side of the onnxruntime runner.

Tests marked ``cuda`` need a GPU (skipped without one): CUDA provider, IOBinding with the state
kept on the GPU, ``require_gpu``, fp16 graphs. The fallback tests run everywhere: they ask for
CUDA on a machine where onnxruntime cannot start it (no GPU here, or broken CUDA libraries on a
GPU machine) and check that this is refused under ``require_gpu``, otherwise becomes one log line
and a CPU runner, and that onnxruntime's own error output stays muted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from exitwise.bundle import load_bundle
from exitwise.models import select_rows
from exitwise.preprocess import normalize
from exports import ProviderError, load_onnx_runner
from exports import runtime as runtime_module
from exports.parity import FP16_TARGETS
from tests.export_helpers import (
    assert_same_early_exit,
    early_exit,
    random_pixels,
    tiny_exported,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.getbasetemp() / "export-tiny"
    base.mkdir(exist_ok=True)
    return tiny_exported(base)


def _images(n: int = 64) -> torch.Tensor:
    from exitwise.preprocess import FASHION_MNIST

    return normalize(random_pixels(n, 1, 28, seed=5), FASHION_MNIST)


@pytest.fixture
def cuda_unusable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ask onnxruntime for CUDA where it cannot start it."""
    if torch.cuda.is_available():
        # A GPU machine: make onnxruntime's CUDA provider fail by naming a GPU that is not there.
        real = runtime_module.cuda_provider
        monkeypatch.setattr(
            runtime_module,
            "cuda_provider",
            lambda index: (real(index)[0], {**real(index)[1], "device_id": "4096"}),
        )
    else:
        monkeypatch.setattr(
            runtime_module, "resolve_device", lambda device, require_gpu: torch.device("cuda", 0)
        )
        monkeypatch.setattr(runtime_module, "cuda_provider_installed", lambda: True)


def test_cuda_fallback_is_refused_with_require_gpu(exported, cuda_unusable, capfd) -> None:
    with pytest.raises(ProviderError, match="--require-gpu: onnxruntime could not start"):
        load_onnx_runner(load_bundle(exported[0]), "cuda", require_gpu=True)
    assert "onnxruntime" not in capfd.readouterr().err  # its own noise stayed muted


def test_cuda_fallback_is_one_log_line(exported, cuda_unusable, caplog, capfd) -> None:
    with caplog.at_level(logging.INFO, logger="exports.runtime"):
        try:
            runner = load_onnx_runner(load_bundle(exported[0]), "cuda")
        except ProviderError:  # a GPU machine whose onnxruntime rejects the device id outright
            pytest.skip("onnxruntime refused the bogus device id instead of falling back")
    assert runner.provider == "CPUExecutionProvider" and runner.device == torch.device("cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not start its CUDA provider" in warnings[0]
    err = capfd.readouterr().err
    assert "Failed to load library" not in err and "CUDAExecutionProvider" not in err
    _, logits = runner.run_stage(0, runner.initial_state(_images(4)))
    assert logits.shape == (4, 10)


@pytest.mark.cuda
def test_cuda_provider_and_iobinding(exported: tuple[Path, Path], caplog) -> None:
    bundle = load_bundle(exported[0])
    with caplog.at_level(logging.INFO, logger="exports.runtime"):
        gpu = load_onnx_runner(bundle, "auto", require_gpu=True)
    assert gpu.provider == "CUDAExecutionProvider" and gpu.device.type == "cuda"
    assert gpu.use_iobinding
    assert any("CUDAExecutionProvider" in r.getMessage() for r in caplog.records)
    cpu = load_onnx_runner(bundle, "cpu")
    x = _images(24)
    a, b = gpu.initial_state(x), cpu.initial_state(x)
    assert a[0].is_cuda
    for k in range(gpu.num_exits):
        a, la = gpu.run_stage(k, a)
        b, lb = cpu.run_stage(k, b)
        # The state never leaves the GPU; logits come back there as float32.
        assert all(t.is_cuda for t in a) and la.is_cuda and la.dtype == torch.float32
        assert float((la.cpu() - lb).abs().max()) <= 1e-3  # cuDNN vs MLAS summation order
        keep = torch.arange(0, a[0].shape[0] if a else 0, 3)
        a, b = select_rows(a, keep.cuda()), select_rows(b, keep)


@pytest.mark.cuda
def test_cuda_early_exit_matches_cpu(exported: tuple[Path, Path]) -> None:
    bundle = load_bundle(exported[0])
    gpu_bound = load_onnx_runner(bundle, "cuda", require_gpu=True)
    gpu_plain = load_onnx_runner(bundle, "cuda", use_iobinding=False)
    cpu = load_onnx_runner(bundle, "cpu")
    x = _images(64)
    for point in bundle.calibration().operating_points:
        thresholds = torch.from_numpy(point.threshold_array())
        for batch in (1, 16, 64):
            for start in range(0, 64 if batch > 1 else 8, batch):
                want = early_exit(cpu, x[start : start + batch], thresholds)
                for runner in (gpu_bound, gpu_plain):
                    got = early_exit(runner, x[start : start + batch], thresholds)
                    assert_same_early_exit(got, want, thresholds, atol=1e-3, band=1e-3)


@pytest.mark.cuda
def test_cuda_fp16_graphs(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp() / "export-tiny"
    base.mkdir(exist_ok=True)
    bundle_dir, _ = tiny_exported(base, fp16=True)
    bundle = load_bundle(bundle_dir)
    runner = load_onnx_runner(bundle, "cuda", require_gpu=True)
    assert runner.fp16 and runner.provider == "CUDAExecutionProvider"
    model = bundle.load_model()
    x = _images(32)
    state, ref = runner.initial_state(x), model.initial_state(x)
    for k in range(runner.num_exits):
        state, logits = runner.run_stage(k, state)
        with torch.no_grad():
            ref, want = model.run_stage(k, ref)
        assert all(t.is_cuda and t.dtype == torch.float16 for t in state)
        assert logits.dtype == torch.float32
        assert float((logits.cpu() - want).abs().max()) <= FP16_TARGETS.max_abs_logits_diff
