"""Export + parity for the CIFAR presets, and fp16 at another opset through the CLI.

The CIFAR bundles carry random weights (BatchNorm statistics set from random images, so
activations have a trained network's scale) and point at a data set the tests do not have, so
parity runs on random images, as the export says. A calibration solved on those same images puts
thresholds exactly on image confidences, so decision parity is tested where it is hardest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cli import main
from exitwise.bundle import Bundle, load_bundle
from exitwise.preprocess import normalize
from exports import export_bundle, load_onnx_runner, read_onnx_manifest
from exports.manifest import OnnxManifest
from exports.parity import FP16_TARGETS, FP32_TARGETS, load_parity_images
from tests.export_helpers import (
    assert_same_early_exit,
    early_exit,
    random_bundle,
    random_pixels,
    tiny_exported,
    torch_runner,
    write_test_calibration,
)

PARITY_IMAGES = 96
PRESETS = {"msdnet-cifar10": 5, "msdnet-cifar100": 5, "ranet-cifar100": 8}


@pytest.fixture(scope="module", params=sorted(PRESETS))
def exported_preset(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Bundle, OnnxManifest, list[str]]:
    preset = request.param
    bundle = random_bundle(tmp_path_factory.mktemp(preset) / "bundle", preset)
    # Thresholds on exactly the images parity will use (the same seed as the export's).
    write_test_calibration(bundle, load_parity_images(bundle, PARITY_IMAGES).pixels)
    notes: list[str] = []
    manifest = export_bundle(bundle, parity_images=PARITY_IMAGES, progress=notes.append)
    return bundle, manifest, notes


def test_export_and_parity(exported_preset: tuple[Bundle, OnnxManifest, list[str]]) -> None:
    bundle, manifest, notes = exported_preset
    assert manifest.num_exits == PRESETS[bundle.manifest.preset or ""]
    p = manifest.parity
    assert p.passed and p.inputs == "random" and p.images == PARITY_IMAGES
    assert any(n.startswith(f"parity on {PARITY_IMAGES} random images: the ") for n in notes)
    assert all(d <= FP32_TARGETS.max_abs_logits_diff for d in p.max_abs_logits_diff)
    assert len(p.operating_points) == 3
    for op in p.operating_points:
        assert op.disagreements == op.borderline  # only threshold-defining images may move
    # Stage k's outputs are stage k+1's inputs, every one of them (RANet's states include
    # tensors a stage passes through or ignores).
    for prev, nxt in zip(manifest.stages, manifest.stages[1:], strict=False):
        assert [t.shape for t in prev.state_outputs] == [t.shape for t in nxt.inputs]
    assert read_onnx_manifest(load_bundle(bundle.path)) == manifest


def test_runner_with_row_dropping_matches_torch(
    exported_preset: tuple[Bundle, OnnxManifest, list[str]],
) -> None:
    bundle, _, _ = exported_preset
    spec = bundle.manifest.preprocessing
    x = normalize(random_pixels(48, spec.channels, spec.crop, seed=7), spec)
    reference = torch_runner(bundle.load_model())
    runner = load_onnx_runner(bundle, "cpu", use_iobinding=True)
    exits_seen = set()
    points = bundle.calibration().operating_points
    for point in points:
        thresholds = torch.from_numpy(point.threshold_array())
        # Every point on a full batch; batches of 1 and 16 (the shapes change from stage to
        # stage differently) on the middle point only, to keep the test short.
        sizes = ((1, 4), (16, 32), (48, 48)) if point == points[1] else ((48, 48),)
        for batch, count in sizes:
            for start in range(0, count, batch):
                want = early_exit(reference, x[start : start + batch], thresholds)
                got = early_exit(runner, x[start : start + batch], thresholds)
                assert_same_early_exit(got, want, thresholds, atol=1e-4)
                exits_seen.update(want.exits.tolist())
    assert len(exits_seen) >= 3


def test_fp16_at_opset_17_via_cli(tmp_path_factory: pytest.TempPathFactory, capsys) -> None:
    base = tmp_path_factory.getbasetemp() / "export-tiny"
    base.mkdir(exist_ok=True)
    bundle_dir, data = tiny_exported(base)
    copy = Path(shutil.copytree(bundle_dir, tmp_path_factory.mktemp("fp16") / "bundle"))
    args = ["export", str(copy), "--fp16", "--opset", "17", "--data-root", str(data)]
    assert main([*args, "--parity-images", "128"]) == 0
    out, _ = capsys.readouterr()
    assert "opset 17, fp16" in out
    manifest = read_onnx_manifest(load_bundle(copy))
    assert manifest.fp16 and manifest.opset == 17 and manifest.parity.passed
    assert max(manifest.parity.max_abs_logits_diff) <= FP16_TARGETS.max_abs_logits_diff
    assert all(t.dtype == "float16" for s in manifest.stages for t in s.state_outputs)
    assert all(s.logits.dtype == "float32" for s in manifest.stages)
    # The runner hands out fp16 state and float32 logits, close to the fp32 model's.
    bundle = load_bundle(copy)
    runner = load_onnx_runner(bundle, "cpu")
    model = bundle.load_model()
    x = normalize(random_pixels(20, 1, 28, seed=3), bundle.manifest.preprocessing)
    state, ref = runner.initial_state(x), model.initial_state(x)
    for k in range(runner.num_exits):
        state, logits = runner.run_stage(k, state)
        with torch.no_grad():
            ref, want = model.run_stage(k, ref)
        assert logits.dtype == torch.float32
        assert all(t.dtype == torch.float16 for t in state)
        assert float((logits - want).abs().max()) <= FP16_TARGETS.max_abs_logits_diff
