"""Parity: do the stage graphs, run in onnxruntime, compute what the PyTorch model computes?

Both run the same images stage by stage, each on its own state (onnxruntime's stage k+1 reads
onnxruntime's stage k outputs, as in serving). Compared per exit: the largest absolute logits
difference and the share of images with the same arg-max class; per calibrated operating point:
the share of images whose exit decision (:func:`exitwise.policy.decide_exits` on float64
confidences) is the same.

A decision can only differ when an image's two confidences straddle a threshold. Calibration
puts thresholds exactly at held-out images' confidences, so the image that defines a threshold
sits on it and any last-bit difference can move it across. Such a disagreement is *borderline*
when the two confidences differ by no more than a small band (1e-6 for fp32 graphs); the
agreement target applies to the other images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from exitwise.bundle import Bundle, Calibration
from exitwise.datasets import DatasetNotFoundError, EvalImages, open_dataset
from exitwise.models import EarlyExitNet
from exitwise.policy import confidence_and_prediction, decide_exits
from exitwise.preprocess import Preprocessing, normalize

from .manifest import OperatingPointParity, Parity, StageGraph

Note = Callable[[str], None]


@dataclass(frozen=True)
class ParityTargets:
    max_abs_logits_diff: float
    agreement: float  # of exit decisions, among the images outside the borderline band
    decision_band: float  # confidence gap within which a changed decision is borderline


# fp32: the graphs compute what PyTorch computes up to summation order; a decision may change
# only for an image whose confidence sits on a threshold (within 1e-6).
FP32_TARGETS = ParityTargets(max_abs_logits_diff=1e-4, agreement=1.0, decision_band=1e-6)
# fp16 keeps ~3 significant digits per operation; through a few dozen layers the logits move by
# a few hundredths, and images near a threshold can change exit.
FP16_TARGETS = ParityTargets(max_abs_logits_diff=5e-2, agreement=0.99, decision_band=5e-3)

DEFAULT_PARITY_IMAGES = 512
PARITY_BATCH = 64


@dataclass(frozen=True)
class ParityImages:
    pixels: Tensor  # uint8 [N, C, crop, crop], what normalize() expects
    source: str  # "heldout" or "random"
    dataset: str | None


def load_parity_images(
    bundle: Bundle,
    count: int,
    data_root: str | os.PathLike[str] | None = None,
    note: Note | None = None,
    seed: int = 0,
) -> ParityImages:
    """The first ``count`` held-out images of the bundle, or random pixels when the data set
    (or the bundle's held-out split) is not available, saying so through ``note``."""
    m = bundle.manifest
    spec = m.preprocessing
    if m.heldout is None or m.dataset is None:
        reason = "the bundle names no held-out split"
    else:
        indices = bundle.heldout_indices()[:count]  # a corrupted split is refused, not skipped
        try:
            train = open_dataset(m.dataset, m.heldout.source_split, data_root, source=m.folder)
        except DatasetNotFoundError as err:
            reason = f"the {m.dataset} data set is not available ({err})"
        else:
            view = EvalImages(train, spec, indices)
            pixels = torch.stack([view[i][0] for i in range(len(view))])
            return ParityImages(pixels, "heldout", m.dataset)
    if note is not None:
        note(f"parity on {count} random images: {reason}")
    generator = torch.Generator().manual_seed(seed)
    shape = (count, spec.channels, spec.crop, spec.crop)
    pixels = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return ParityImages(pixels, "random", m.dataset)


def _torch_logits(model: EarlyExitNet, x: Tensor) -> list[Tensor]:
    with torch.no_grad():
        state = model.initial_state(x)
        out = []
        for k in range(model.num_exits):
            state, logits = model.run_stage(k, state)
            out.append(logits.float())
    return out


def _onnx_logits(sessions: Sequence[Any], graphs: Sequence[StageGraph], x: Tensor) -> list[Tensor]:
    state: list[np.ndarray] = [x.numpy()]
    out = []
    for session, graph in zip(sessions, graphs, strict=True):
        feeds = {spec.name: arr for spec, arr in zip(graph.inputs, state, strict=True)}
        results = session.run([o.name for o in graph.outputs], feeds)
        state = list(results[:-1])
        out.append(torch.from_numpy(np.asarray(results[-1], dtype=np.float32)))
    return out


def _decision_parity(
    name: str,
    thresholds: np.ndarray,
    conf_t: np.ndarray,
    conf_o: np.ndarray,
    band: float,
) -> OperatingPointParity:
    exits_t = decide_exits(conf_t, thresholds)
    exits_o = decide_exits(conf_o, thresholds)
    differ = np.flatnonzero(exits_t != exits_o)
    # Up to the earlier of the two exits both kept going; there one stopped and one did not.
    first = np.minimum(exits_t[differ], exits_o[differ])
    gap = np.abs(conf_t[differ, first] - conf_o[differ, first])
    n = len(conf_t)
    return OperatingPointParity(
        name=name,
        agreement=float((n - len(differ)) / n),
        borderline=int((gap <= band).sum()),
        disagreements=len(differ),
    )


def check_parity(
    model: EarlyExitNet,
    sessions: Sequence[Any],
    graphs: Sequence[StageGraph],
    images: ParityImages,
    preprocessing: Preprocessing,
    calibration: Calibration | None,
    targets: ParityTargets,
    *,
    provider: str,
    onnxruntime_version: str,
    batch_size: int = PARITY_BATCH,
) -> Parity:
    """Compare the graphs with the PyTorch ``model`` (fp32, CPU) on ``images``."""
    k = model.num_exits
    torch_logits: list[list[Tensor]] = [[] for _ in range(k)]
    onnx_logits: list[list[Tensor]] = [[] for _ in range(k)]
    n = len(images.pixels)
    for start in range(0, n, batch_size):
        x = normalize(images.pixels[start : start + batch_size], preprocessing)
        for acc, out in (
            (torch_logits, _torch_logits(model, x)),
            (onnx_logits, _onnx_logits(sessions, graphs, x)),
        ):
            for j in range(k):
                acc[j].append(out[j])
    lt = [torch.cat(chunks) for chunks in torch_logits]
    lo = [torch.cat(chunks) for chunks in onnx_logits]
    diffs = [float((a - b).abs().max()) for a, b in zip(lt, lo, strict=True)]
    conf_t, pred_t = (
        torch.stack(v, dim=1) for v in zip(*map(confidence_and_prediction, lt), strict=True)
    )
    conf_o, pred_o = (
        torch.stack(v, dim=1) for v in zip(*map(confidence_and_prediction, lo), strict=True)
    )
    agreement = [float(v) for v in (pred_t == pred_o).double().mean(dim=0)]
    points = []
    if calibration is not None:
        ct, co = conf_t.numpy(), conf_o.numpy()
        for point in calibration.operating_points:
            points.append(
                _decision_parity(point.name, point.threshold_array(), ct, co, targets.decision_band)
            )
    passed = all(d <= targets.max_abs_logits_diff and np.isfinite(d) for d in diffs) and all(
        (p.disagreements - p.borderline) / n <= 1.0 - targets.agreement for p in points
    )
    return Parity(
        inputs="heldout" if images.source == "heldout" else "random",
        dataset=images.dataset,
        images=n,
        batch_size=batch_size,
        provider=provider,
        onnxruntime=onnxruntime_version,
        max_abs_logits_diff=diffs,
        prediction_agreement=agreement,
        operating_points=points,
        target_max_abs_logits_diff=targets.max_abs_logits_diff,
        target_agreement=targets.agreement,
        decision_band=targets.decision_band,
        passed=passed,
    )


def describe_failure(parity: Parity) -> str:
    """One line: what missed its target."""
    problems = []
    for exit_, diff in enumerate(parity.max_abs_logits_diff, start=1):
        if not diff <= parity.target_max_abs_logits_diff:
            problems.append(
                f"exit {exit_} logits differ by {diff:.3g} "
                f"(target {parity.target_max_abs_logits_diff:g})"
            )
    for p in parity.operating_points:
        clear = p.disagreements - p.borderline
        if clear / parity.images > 1.0 - parity.target_agreement:
            problems.append(
                f"operating point {p.name!r}: {clear} of {parity.images} images change exit"
            )
    return "; ".join(problems) or "unknown"
