"""``exitwise calibrate`` end to end: scores (cached), solving, evaluation, report, plot, files.

Everything is computed before anything is written, and ``calibration.json`` is written last, so
a refused or failed run leaves an existing calibration untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exitwise.bundle import Bundle, Calibration, load_bundle, write_calibration
from exitwise.devices import resolve_device
from exitwise.errors import BundleError
from exitwise.fileio import atomic_write_bytes
from exitwise.models import EarlyExitNet

from .build import SolvedPoint, build_calibration
from .cache import cache_key, labels_match, load_cached, save_cached
from .curves import Curve, curve
from .data import SplitData, dataset_name, open_splits
from .errors import CalibrationError, DataMismatchError
from .plot import render_curve
from .probabilities import compute_scores
from .report import ReportContext, render_report
from .scores import SplitScores
from .targets import Target, plan_targets

REPORT_FILE = Path("calibration") / "report.md"
CURVE_FILE = Path("calibration") / "curve.png"

Log = Callable[[str], None]
_HUMAN = {"heldout": "held-out", "test": "test"}


@dataclass(frozen=True)
class CalibrateOptions:
    data_root: str | Path | None = None
    budgets: Sequence[float] = ()
    fractions: Sequence[float] = ()
    compare: str | Path | None = None
    device: str = "auto"
    batch_size: int = 256
    workers: int = 0
    keep_logits: bool = False
    use_cache: bool = True
    default: str | None = None
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    command: str | None = None  # recorded in the report


@dataclass
class CalibrateResult:
    bundle: Bundle
    calibration: Calibration
    solved: list[SolvedPoint]
    heldout: SplitScores
    test: SplitScores
    compared: list[Curve] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _noop(_: str) -> None:
    return None


def split_scores(
    bundle: Bundle,
    split: SplitData,
    model: EarlyExitNet | None,
    options: CalibrateOptions,
    device: torch.device,
    *,
    write_cache: bool,
    log: Log,
) -> tuple[SplitScores, EarlyExitNet | None]:
    """A split's scores from the bundle's cache, or computed (and cached when allowed)."""
    key = cache_key(bundle, split)
    if options.use_cache:
        cached, why = load_cached(bundle.path, key, need_logits=options.keep_logits)
        if cached is not None and not labels_match(cached, split.view.labels):
            cached, why = None, "its labels differ from the data set's"
        if cached is not None:
            log(f"{bundle.name}: {_HUMAN[split.name]} scores ({split.images} images) {why}")
            return cached, model
        if why != "no cache":
            log(f"{bundle.name}: cache not used: {why}")
    if model is None:
        model = bundle.load_model(device)
    what = f"{split.images} {_HUMAN[split.name]} images"
    log(f"{bundle.name}: running the network over {what} on {device}")
    scores = compute_scores(
        model,
        split.view,
        device=device,
        batch_size=options.batch_size,
        workers=options.workers,
        keep_logits=options.keep_logits,
        desc=f"{bundle.name} {split.name}",
        progress=options.progress,
    )
    if write_cache:
        try:
            save_cached(
                bundle.path,
                key,
                scores,
                {"device": str(device), "batch_size": str(options.batch_size)},
            )
        except OSError as err:
            log(f"{bundle.name}: could not write the score cache ({err.strerror})")
    return scores, model


def bundle_scores(
    bundle: Bundle,
    options: CalibrateOptions,
    device: torch.device,
    *,
    write_cache: bool,
    log: Log,
) -> tuple[SplitScores, SplitScores]:
    splits = open_splits(bundle, options.data_root)
    model: EarlyExitNet | None = None
    out = []
    for split in splits:
        scores, model = split_scores(
            bundle, split, model, options, device, write_cache=write_cache, log=log
        )
        if scores.num_exits != bundle.manifest.num_exits:
            raise BundleError(
                f"{bundle.path}: the network has {scores.num_exits} exits, the manifest lists "
                f"{bundle.manifest.num_exits}"
            )
        out.append(scores)
    return out[0], out[1]


def open_compare(path: str | Path, bundle: Bundle) -> Bundle:
    """The bundle to overlay; refused unless it was trained on the same task."""
    other = load_bundle(path)
    if other.path.resolve() == bundle.path.resolve():
        raise CalibrationError("--compare names the bundle being calibrated")
    mine, theirs = dataset_name(bundle), dataset_name(other)
    if mine != theirs or other.manifest.class_names != bundle.manifest.class_names:
        raise DataMismatchError(
            f"--compare {other.path}: it was trained on {theirs!r} "
            f"({other.manifest.num_classes} classes), this bundle on {mine!r} "
            f"({bundle.manifest.num_classes} classes); curves of different tasks do not compare"
        )
    return other


def compare_curve(
    other: Bundle,
    label: str,
    targets: Sequence[Target],
    options: CalibrateOptions,
    device: torch.device,
    log: Log,
) -> Curve:
    """The other bundle's curve: from its calibration.json, or computed without writing to it."""
    if other.has_calibration:
        log(f"{other.name}: using its calibration.json")
        return curve(other.calibration(), label)
    if other.manifest.heldout is None:
        raise CalibrationError(
            f"--compare {other.path}: not calibrated and without a held-out split to calibrate on"
        )
    heldout, test = bundle_scores(other, options, device, write_cache=False, log=log)
    costs = other.manifest.exit_mflops
    usable = [t for t in targets if costs[0] <= t.mflops <= costs[-1]]
    cal, _ = build_calibration(
        weights_sha256=other.weights_sha256,
        heldout_sha256=other.manifest.heldout.sha256,
        exit_mflops=costs,
        heldout=heldout,
        test=test,
        targets=usable or plan_targets([], [], costs),
    )
    return curve(cal, label)


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise CalibrationError(f"{path}: cannot be written ({err.strerror})") from err


def run_calibration(
    path: str | Path, options: CalibrateOptions, log: Log = _noop
) -> CalibrateResult:
    bundle = load_bundle(path)
    m = bundle.manifest
    if m.heldout is None:
        raise CalibrationError(
            f"{bundle.path}: the bundle has no held-out split; thresholds fitted on training "
            "images would be biased (train with a held-out split)"
        )
    if options.batch_size < 1:
        raise CalibrationError("--batch-size must be at least 1")
    if options.workers < 0:
        raise CalibrationError("--workers must be 0 or more")
    # Everything that can be refused without running the network is checked first.
    targets = plan_targets(options.budgets, options.fractions, m.exit_mflops, str(path))
    names = [t.name for t in targets]
    if options.default is not None and options.default not in names:
        raise CalibrationError(
            f"--default {options.default!r} is not one of the operating points: {', '.join(names)}"
        )
    other = None if options.compare is None else open_compare(options.compare, bundle)
    device = resolve_device(options.device)

    heldout, test = bundle_scores(bundle, options, device, write_cache=options.use_cache, log=log)
    calibration, solved = build_calibration(
        weights_sha256=bundle.weights_sha256,
        heldout_sha256=m.heldout.sha256,
        exit_mflops=m.exit_mflops,
        heldout=heldout,
        test=test,
        targets=targets,
        default=options.default,
    )
    own = curve(calibration, bundle.name)
    compared = []
    if other is not None:
        label = other.name if other.name != bundle.name else f"{other.name} ({other.path.name})"
        compared.append(compare_curve(other, label, targets, options, device, log))

    context = ReportContext(
        bundle_name=bundle.name,
        dataset=dataset_name(bundle),
        heldout_images=heldout.images,
        test_images=test.images,
        command=options.command,
        default_chosen=options.default is None,
    )
    report = render_report(calibration, context, own, compared)
    png = render_curve([own, *compared], f"{bundle.name} on {context.dataset}")

    # Write last, calibration.json last of all.
    _write(bundle.path / REPORT_FILE, report.encode("utf-8"))
    _write(bundle.path / CURVE_FILE, png)
    try:
        write_calibration(bundle, calibration)
    except OSError as err:
        raise CalibrationError(f"{bundle.path}: cannot write calibration.json ({err})") from err
    files = [bundle.path / "calibration.json", bundle.path / REPORT_FILE, bundle.path / CURVE_FILE]
    return CalibrateResult(bundle, calibration, solved, heldout, test, compared, files)
