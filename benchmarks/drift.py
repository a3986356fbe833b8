"""``exitwise bench drift``: does an operating point keep its cost when traffic drifts?

For every shift (:mod:`benchmarks.shifts`) and every calibrated operating point, a stream of
test images goes through the server's own data plane (:class:`serving.service.ModelService`:
budget control, engine, exit rule; no HTTP): clean images, then shifted ones, then clean again,
once with budget control off and once on, each run on a fresh service. Requests of a few images
are kept in flight together so the engine batches as under load.

Per image it records the MFLOPs spent and whether the class was right (the rendered digits have
no labels). The report gives, per phase, the realised cost against the point's expected cost
(the mean over the phase, and over the part of it after the first ``settle`` images) and the
accuracy, with and without control, and a figure of the realised cost over the stream.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitwise.fileio import atomic_write_bytes
from exitwise.preprocess import Preprocessing, normalize

from .shifts import SHIFTS

PHASES = ("clean", "shifted", "clean again")


@dataclass
class Run:
    shift: str
    point: str
    target: float
    control: bool
    phase_sizes: tuple[int, int, int]
    costs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    exits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # 1-based
    correct: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NaN: no label
    seconds: float = 0.0
    moves: int = 0  # budget control's moves during the run
    final_budget: float | None = None  # the held-out budget it served at the end
    control_seconds: float = 0.0  # time in budget control's calls (plan and observe)
    compute_seconds: float = 0.0  # time the engine spent running stage batches

    def phase(self, index: int) -> slice:
        start = sum(self.phase_sizes[:index])
        return slice(start, start + self.phase_sizes[index])


def make_stream(
    pixels: np.ndarray,
    labels: np.ndarray,
    shift: str,
    sizes: tuple[int, int, int],
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 pixels and labels (-1: none) of the three phases, drawn from the test images."""
    rng = np.random.default_rng(seed)
    take = rng.permutation(len(pixels))
    order = np.resize(take, sum(sizes))  # cycles when a phase is longer than the test set
    px, lab = pixels[order].copy(), labels[order].astype(np.int64)
    mid = slice(sizes[0], sizes[0] + sizes[1])
    px[mid] = SHIFTS[shift](px[mid], rng)
    if shift == "digits":
        lab[mid] = -1
    return px, lab


async def run_stream(
    service: Any,
    x: np.ndarray,
    budget: float,
    per_request: int = 8,
    in_flight: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Serve ``x`` (normalised FP32 ``[N, C, H, W]``) at ``budget`` in order, as requests of
    ``per_request`` images with ``in_flight`` at a time; per image its MFLOPs, class, exit."""
    from serving.messages import ClassifyRequest
    from serving.params import RequestParams

    n = len(x)
    costs = np.zeros(n)
    classes = np.zeros(n, dtype=np.int64)
    exits = np.zeros(n, dtype=np.int64)
    gate = asyncio.Semaphore(in_flight)
    params = RequestParams(budget_mflops=budget, top_k=0)
    tasks = []

    async def one(start: int) -> None:
        try:
            req = ClassifyRequest(
                arrived=time.monotonic(), params=params, tensor=x[start : start + per_request]
            )
            result = await service.classify(req)
        finally:
            gate.release()
        for j, p in enumerate(result.predictions):
            costs[start + j] = p.mflops
            classes[start + j] = p.class_id
            exits[start + j] = p.exit

    for start in range(0, n, per_request):
        await gate.acquire()
        tasks.append(asyncio.ensure_future(one(start)))
    await asyncio.gather(*tasks)
    return costs, classes, exits


def run_drift(
    bundle_dir: Path,
    pixels: np.ndarray,
    labels: np.ndarray,
    spec: Preprocessing,
    *,
    shifts: list[str],
    sizes: tuple[int, int, int],
    settings_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    say: Any = None,
) -> list[Run]:
    """Every (shift, operating point, control off/on) run; see the module docstring."""
    from prometheus_client import CollectorRegistry

    from serving.loading import load_model
    from serving.metrics import Metrics
    from serving.service import ModelService
    from serving.settings import Settings

    say = say or (lambda _: None)
    runs: list[Run] = []
    base = Settings(bundle=bundle_dir, **(settings_overrides or {}))  # type: ignore[arg-type]
    loaded = load_model(base)
    points = sorted(loaded.resolver.points, key=lambda p: p.expected_mflops)
    for shift in shifts:
        px, lab = make_stream(pixels, labels, shift, sizes, seed)
        x = normalize(torch.from_numpy(px), spec).numpy()
        for point in points:
            for control in (False, True):
                settings = base.model_copy(update={"budget_control": "on" if control else "off"})
                metrics = Metrics(CollectorRegistry())
                service = ModelService(settings, loaded, metrics)
                timer = _Timed(service.control)
                service.control = timer  # type: ignore[assignment]
                service.start()
                try:
                    t0 = time.perf_counter()
                    costs, classes, exits = asyncio.run(
                        run_stream(service, x, point.expected_mflops)
                    )
                    seconds = time.perf_counter() - t0
                finally:
                    service.stop()
                state = next(s for s in service.control.states() if s.point.name == point.name)
                correct = np.where(lab >= 0, (classes == lab).astype(float), np.nan)
                run = Run(shift, point.name, point.expected_mflops, control, sizes)
                run.costs, run.exits, run.correct, run.seconds = costs, exits, correct, seconds
                if control and state.controller is not None:
                    run.moves = state.controller.moves
                    run.final_budget = state.controller.mixed_budget
                run.control_seconds = timer.seconds
                run.compute_seconds = _sum_of(metrics, "exitwise_compute_seconds")
                runs.append(run)
                shifted = costs[run.phase(1)].mean()
                say(
                    f"{shift:7s} {point.name}: control {'on ' if control else 'off'} shifted "
                    f"phase {shifted:.3f} MFLOPs/image (target {point.expected_mflops:.3f})"
                )
    return runs


def run_sequence(
    bundle_dir: Path,
    pixels: np.ndarray,
    spec: Preprocessing,
    *,
    shifts: list[str],
    shifted: int = 6000,
    settings_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    say: Any = None,
) -> list[dict[str, Any]]:
    """One server per operating point, budget control on, lives through a sequence: clean test
    images (a random number, so the first shift starts anywhere), each shift in turn, then the
    whole clean test split. Per shift the realised cost after 1,000 and 2,000 of its images;
    for the clean split, its realised cost against calibration's expectation on it."""
    from prometheus_client import CollectorRegistry

    from serving.loading import load_model
    from serving.metrics import Metrics
    from serving.service import ModelService
    from serving.settings import Settings

    say = say or (lambda _: None)
    rng = np.random.default_rng(seed)
    lead = int(rng.integers(1000, 3000))
    parts = [pixels[rng.integers(0, len(pixels), lead)]]
    for name in shifts:
        parts.append(SHIFTS[name](pixels[rng.integers(0, len(pixels), shifted)], rng))
    parts.append(pixels[rng.permutation(len(pixels))])
    x = normalize(torch.from_numpy(np.concatenate(parts)), spec).numpy()
    bounds = np.cumsum([0, *(len(p) for p in parts)])
    base = Settings(bundle=bundle_dir, **(settings_overrides or {}))  # type: ignore[arg-type]
    loaded = load_model(base)
    rows = []
    for point in sorted(loaded.resolver.points, key=lambda p: p.expected_mflops):
        service = ModelService(base, loaded, Metrics(CollectorRegistry()))
        service.start()
        try:
            costs, _, _ = asyncio.run(run_stream(service, x, point.expected_mflops))
        finally:
            service.stop()
        state = next(s for s in service.control.states() if s.point.name == point.name)
        target = point.expected_mflops
        expected = point.test.mflops if point.test is not None else target
        row: dict[str, Any] = {"point": point.name, "target": target, "lead": lead}
        row["shifts"] = [
            {
                "shift": name,
                "error_after_1000": float(
                    costs[bounds[i] + 1000 : bounds[i + 1]].mean() / target - 1
                ),
                "error_after_2000": float(
                    costs[bounds[i] + 2000 : bounds[i + 1]].mean() / target - 1
                ),
            }
            for i, name in enumerate(shifts, start=1)
        ]
        row["clean_split_error"] = float(costs[bounds[-2] :].mean() / expected - 1)
        row["moves"] = state.controller.moves if state.controller is not None else 0
        rows.append(row)
        error = 100 * row["clean_split_error"]
        say(f"sequence {point.name}: the clean split after it at {error:+.2f} %")
    return rows


def sequence_markdown(rows: list[dict[str, Any]]) -> str:
    from .tables import markdown_table

    names = [x["shift"] for x in rows[0]["shifts"]] if rows else []
    header = ["point", "target", "clean images first"]
    header += [f"{n}: after {k:,}" for n in names for k in (1000, 2000)]
    header += ["the clean test split after: vs calibration", "moves"]
    cells = [
        [r["point"], f"{r['target']:.3f}", r["lead"]]
        + [f"{100 * x[f'error_after_{k}']:+.1f}%" for x in r["shifts"] for k in (1000, 2000)]
        + [f"{100 * r['clean_split_error']:+.2f}%", r["moves"]]
        for r in rows
    ]
    return markdown_table(header, cells, "lrr" + "r" * (2 * len(names)) + "rr")


class _Timed:
    """Budget control with a stopwatch on the two calls a request makes into it."""

    def __init__(self, control: Any) -> None:
        self.control = control
        self.seconds = 0.0

    def plan(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.control.plan(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def observe(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            self.control.observe(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self.control, name)


def _sum_of(metrics: Any, name: str) -> float:
    value = metrics.registry.get_sample_value(f"{name}_sum")
    return float(value or 0.0)


def summarise(runs: list[Run], settle: int) -> list[dict[str, Any]]:
    """Rows per (shift, point, phase): realised cost and accuracy, off and on."""
    rows: list[dict[str, Any]] = []
    pairs: dict[tuple[str, str], dict[bool, Run]] = {}
    for r in runs:
        pairs.setdefault((r.shift, r.point), {})[r.control] = r
    for (shift, point), by in pairs.items():
        for i, phase in enumerate(PHASES):
            row: dict[str, Any] = {"shift": shift, "point": point, "phase": phase}
            for control, run in sorted(by.items()):
                key = "on" if control else "off"
                sl = run.phase(i)
                costs, correct = run.costs[sl], run.correct[sl]
                row["target"] = run.target
                row[f"mflops_{key}"] = float(costs.mean())
                row[f"error_{key}"] = float(costs.mean() / run.target - 1)
                # After a change of traffic (the shift, and its end) the loop gets ``settle``
                # images; the first phase has had no change.
                later = costs[settle:] if i > 0 and len(costs) > settle else None
                row[f"error_settled_{key}"] = (
                    None if later is None else float(later.mean() / run.target - 1)
                )
                for after in (1000, 2000):  # the two points of reading
                    rest = costs[after:] if i > 0 and len(costs) > after else None
                    row[f"error_after_{after}_{key}"] = (
                        None if rest is None else float(rest.mean() / run.target - 1)
                    )
                row[f"window_error_max_{key}"] = (
                    None if later is None else _window_error(later, run.target)
                )
                labelled = correct[~np.isnan(correct)]
                row[f"accuracy_{key}"] = float(labelled.mean() * 100) if labelled.size else None
            if False in by and True in by:  # control off serves calibration's exits exactly
                sl = by[True].phase(i)
                row["same_exit_on"] = float((by[True].exits[sl] == by[False].exits[sl]).mean())
            rows.append(row)
    return rows


def _window_error(costs: np.ndarray, target: float, window: int = 2000) -> float | None:
    """The largest |error| of the mean over any ``window`` consecutive images (None: too few)."""
    if len(costs) < window:
        return None
    sums = np.convolve(costs, np.ones(window), mode="valid") / window
    return float(np.max(np.abs(sums / target - 1)))


def markdown(rows: list[dict[str, Any]], settle: int) -> str:
    from .tables import markdown_table

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:+.1f}%"

    def acc(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    header = [
        "shift", "point", "phase", "target", "off: realised", "on: realised",
        f"on: after {settle}", "on: worst 2000-window", "accuracy off", "accuracy on",
        "on: same exit as off",
    ]  # fmt: skip
    cells = [
        [
            r["shift"],
            r["point"],
            r["phase"],
            f"{r['target']:.3f}",
            pct(r["error_off"]),
            pct(r["error_on"]),
            pct(r["error_settled_on"]),
            pct(r["window_error_max_on"]),
            acc(r["accuracy_off"]),
            acc(r["accuracy_on"]),
            "-" if r.get("same_exit_on") is None else f"{100 * r['same_exit_on']:.1f}%",
        ]
        for r in rows
    ]
    return markdown_table(header, cells, "lllrrrrrrrr")


def plot(runs: list[Run], path: Path, window: int = 500) -> None:
    """Realised MFLOPs per image (sliding mean) over the stream, control off and on, per shift
    (rows) and operating point (columns), with the target and the phase boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = list(dict.fromkeys(r.shift for r in runs))
    points = list(dict.fromkeys(r.point for r in runs))
    fig, axes = plt.subplots(
        len(shifts), len(points), figsize=(4 * len(points), 2.4 * len(shifts)), squeeze=False
    )
    for r in runs:
        ax = axes[shifts.index(r.shift)][points.index(r.point)]
        k = min(window, len(r.costs))
        smooth = np.convolve(r.costs, np.ones(k) / k, mode="valid")
        xs = np.arange(k - 1, len(r.costs))
        ax.plot(xs, smooth, color="tab:green" if r.control else "tab:red", lw=1.2,
                label="control on" if r.control else "control off")  # fmt: skip
        ax.axhline(r.target, color="black", lw=0.8, ls="--")
        for b in np.cumsum(r.phase_sizes)[:-1]:
            ax.axvline(b, color="grey", lw=0.6, ls=":")
        ax.set_title(f"{r.shift}, {r.point}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("image", fontsize=8)
    for row in axes:
        row[0].set_ylabel(f"MFLOPs/image ({window}-mean)", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
