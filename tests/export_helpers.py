"""Helpers for the export tests: untrained bundles of any preset, and a calibration.json.

An untrained network with BatchNorm at its initial statistics (mean 0, variance 1) lets
activations grow layer after layer, so its logits reach the thousands and say nothing about
numerical parity. :func:`random_bundle` therefore sets the BatchNorm statistics from a few
batches of random images, as training would, so activations and logits have a trained
network's scale while the weights stay random.

:func:`write_test_calibration` solves thresholds with calibration's rule (DESIGN.md: geometric
exit distribution, the threshold at the floor(n p_k)-th most confident remaining image, ties
exit together) on the given images, so thresholds sit exactly on images' confidences, as real
calibrations do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from exitwise.bundle import (
    Bundle,
    Calibration,
    HeldOutSplit,
    OperatingPoint,
    SplitResult,
    indices_sha256,
    save_bundle,
    utc_now,
    write_calibration,
)
from exitwise.datasets import default_preprocessing
from exitwise.models import EarlyExitNet, create_model, get_preset, select_rows
from exitwise.policy import confidence_and_prediction, decide_exits, stops_here
from exitwise.preprocess import normalize

PRESET_DATASETS = {
    "msdnet-cifar10": "cifar10",
    "msdnet-cifar100": "cifar100",
    "ranet-cifar100": "cifar100",
    "msdnet-fmnist": "fashion-mnist",
}


def random_pixels(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)


def set_bn_statistics(model: EarlyExitNet, images: torch.Tensor, batch: int = 32) -> None:
    """Cumulative BatchNorm statistics over ``images`` (normalised float input)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(images[start : start + batch])
    model.eval()


def random_bundle(path: Path, preset: str, seed: int = 0, n_train: int = 50000) -> Bundle:
    """An untrained (BN-statistics-only) bundle of ``preset`` whose held-out split points into
    a data set that tests do not have, so parity falls back to random images."""
    torch.manual_seed(seed)
    dataset = PRESET_DATASETS[preset]
    spec = default_preprocessing(dataset)
    model = create_model(preset)
    pixels = random_pixels(64, spec.channels, spec.crop, seed + 1)
    set_bn_statistics(model, normalize(pixels, spec))
    held = np.arange(n_train - min(1000, n_train // 5), n_train, dtype=np.int64)
    split = HeldOutSplit(dataset=dataset, size=len(held), seed=seed, sha256=indices_sha256(held))
    num_classes = get_preset(preset).num_classes
    return save_bundle(
        path,
        model,
        name=f"random-{preset}",
        class_names=[f"class {i}" for i in range(num_classes)],
        preprocessing=spec,
        preset=preset,
        dataset=dataset,
        heldout=(split, held),
        training={"weighting": "uniform", "epochs": 0, "seed": seed},
    )


def thresholds_for_q(confidences: np.ndarray, q: float) -> list[float | None]:
    """Calibration's threshold rule on ``[n, K]`` float64 confidences."""
    n, k = confidences.shape
    p = q ** np.arange(1, k + 1, dtype=np.float64)
    p /= p.sum()
    remaining = np.ones(n, dtype=bool)
    out: list[float | None] = []
    for j in range(k - 1):
        count = math.floor(n * p[j])
        conf = np.sort(confidences[remaining, j])[::-1]
        if count == 0 or count > len(conf):
            out.append(None)
            continue
        t = float(conf[count - 1])
        out.append(t)
        remaining &= ~(confidences[:, j] >= t)
    out.append(None)
    return out


def bundle_confidences(bundle: Bundle, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """float64 confidences ``[n, K]`` and predictions of the bundle's model on uint8 pixels."""
    model = bundle.load_model()
    spec = bundle.manifest.preprocessing
    conf, pred = [], []
    with torch.no_grad():
        for start in range(0, len(pixels), 64):
            logits = model(normalize(pixels[start : start + 64], spec))
            pairs = [confidence_and_prediction(lg) for lg in logits]
            conf.append(torch.stack([c for c, _ in pairs], dim=1))
            pred.append(torch.stack([p for _, p in pairs], dim=1))
    return torch.cat(conf).numpy(), torch.cat(pred).numpy()


def write_test_calibration(
    bundle: Bundle,
    pixels: torch.Tensor,
    labels: np.ndarray | None = None,
    qs: Sequence[float] = (0.5, 1.0, 2.0),
) -> Calibration:
    """Operating points ``q<q>`` solved on ``pixels`` (uint8), written to the bundle."""
    conf, pred = bundle_confidences(bundle, pixels)
    n, k = conf.shape
    mflops = bundle.manifest.exit_mflops
    truth = labels if labels is not None else pred[:, -1]
    points = []
    for q in qs:
        thresholds = thresholds_for_q(conf, q)
        arr = np.array([math.inf if t is None else t for t in thresholds])
        arr[-1] = -math.inf
        exits = decide_exits(conf, arr)
        fractions = [float((exits == j).mean()) for j in range(k)]
        correct = pred[np.arange(n), exits] == truth
        points.append(
            OperatingPoint(
                name=f"q{q:g}",
                q=q,
                thresholds=thresholds,
                heldout=SplitResult(
                    accuracy=float(100 * correct.mean()),
                    mflops=float(sum(f * c for f, c in zip(fractions, mflops, strict=True))),
                    exit_fractions=fractions,
                    images=n,
                ),
            )
        )
    heldout = bundle.manifest.heldout
    calibration = Calibration(
        weights_sha256=bundle.weights_sha256,
        heldout_sha256=heldout.sha256 if heldout is not None else "0" * 64,
        created=utc_now(),
        exit_mflops=mflops,
        operating_points=points,
        default_operating_point=points[len(points) // 2].name,
    )
    write_calibration(bundle, calibration)
    return calibration


# --- one trained tiny bundle, exported once per test session ----------------------------------

_CACHE: dict[str, Path] = {}


def tiny_exported(base: Path, fp16: bool = False) -> tuple[Path, Path]:
    """``(bundle, data_root)``: the tiny trained Fashion-MNIST bundle of ``tests.helpers``, with a
    calibration solved on its held-out images and an ONNX export, made once per session under
    ``base`` (a session temporary directory). Tests that change it must work on a copy."""
    from exports import export_bundle
    from exports.parity import load_parity_images
    from tests.helpers import make_bundle, write_fashion_mnist

    key = f"{base}:{fp16}"
    if key not in _CACHE:
        data = base / "data"
        if not data.exists():
            write_fashion_mnist(data)
        root = base / ("bundle-fp16" if fp16 else "bundle")
        bundle = make_bundle(root, data)
        write_test_calibration(bundle, load_parity_images(bundle, 200, data).pixels)
        export_bundle(bundle, data_root=data, fp16=fp16)
        _CACHE[key] = root
    return _CACHE[key], base / "data"


def reuse_exported_stages(bundle_dir: Path):  # type: ignore[no-untyped-def]
    """A stand-in for ``exports.export.export_stage`` that returns the graphs already exported
    in ``bundle_dir/onnx`` (same weights), so tests of what happens around the export (parity,
    publishing, the CLI) do not pay for the exporter again."""
    from exports.graphs import ExportedStage
    from exports.manifest import OnnxManifest

    manifest = OnnxManifest.model_validate_json((bundle_dir / "onnx" / "manifest.json").read_text())

    def export_stage(stage, example, *, index, opset, fp16):  # type: ignore[no-untyped-def]
        graph = manifest.stages[index]
        data = (bundle_dir / "onnx" / graph.file).read_bytes()
        return ExportedStage(data, graph.inputs, graph.outputs, manifest.opset), example

    return export_stage


# --- an engine's loop, for checking runners against each other ---------------------------------


class TorchStages:
    """The PyTorch model as a StageRunner (what the server's torch backend does, minus extras)."""

    backend = "torch"
    provider = "torch-cpu"

    def __init__(self, model: EarlyExitNet) -> None:
        self.model = model.eval()
        self.device = torch.device("cpu")
        self.num_exits = model.num_exits

    def initial_state(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.model.initial_state(images)

    def run_stage(
        self, index: int, state: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            return self.model.run_stage(index, state)


def torch_runner(model: EarlyExitNet) -> TorchStages:
    return TorchStages(model)


@dataclass
class EarlyExitResult:
    exits: torch.Tensor  # [N] 0-based exit index
    predictions: torch.Tensor  # [N]
    logits: torch.Tensor  # [N, C] the logits of each image's exit
    confidences: torch.Tensor  # [N, K] float64, NaN at exits an image never reached


def early_exit(runner, images: torch.Tensor, thresholds: torch.Tensor) -> EarlyExitResult:  # type: ignore[no-untyped-def]
    """Run stage by stage, stop images with the exit rule, drop their rows before the next stage
    (what the server's engine does, without batching)."""
    n, k = len(images), runner.num_exits
    exits = torch.full((n,), -1, dtype=torch.int64)
    preds = torch.full((n,), -1, dtype=torch.int64)
    out_logits: torch.Tensor | None = None
    confidences = torch.full((n, k), float("nan"), dtype=torch.float64)
    rows = torch.arange(n)
    state = runner.initial_state(images)
    for index in range(k):
        state, logits = runner.run_stage(index, state)
        logits = logits.float().cpu()
        if out_logits is None:
            out_logits = torch.zeros(n, logits.shape[1])
        conf, pred = confidence_and_prediction(logits)
        confidences[rows, index] = conf
        stop = stops_here(conf, float(thresholds[index]), index, k)
        exits[rows[stop]] = index
        preds[rows[stop]] = pred[stop]
        out_logits[rows[stop]] = logits[stop]
        keep = torch.nonzero(~stop).squeeze(1)
        if len(keep) == 0:
            break
        state = select_rows(state, keep.to(state[0].device))
        rows = rows[keep]
    assert out_logits is not None and bool((exits >= 0).all())
    return EarlyExitResult(exits, preds, out_logits, confidences)


def assert_same_early_exit(
    got: EarlyExitResult,
    want: EarlyExitResult,
    thresholds: torch.Tensor,
    atol: float,
    band: float = 1e-5,
) -> None:
    """Same exits, predictions and (within ``atol``) logits; an image may take another exit only
    when its confidences straddle a threshold and sit within ``band`` of it."""
    differ = torch.nonzero(got.exits != want.exits).squeeze(1)
    for i in differ.tolist():
        j = int(min(got.exits[i], want.exits[i]))
        thr = float(thresholds[j])
        a, b = float(got.confidences[i, j]), float(want.confidences[i, j])
        assert (a >= thr) != (b >= thr) and abs(a - b) <= band, (i, j, a, b, thr)
    same = got.exits == want.exits
    assert len(differ) <= max(1, len(got.exits) // 50)
    assert torch.equal(got.predictions[same], want.predictions[same])
    assert float((got.logits[same] - want.logits[same]).abs().max()) <= atol
