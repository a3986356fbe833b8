"""The engine benchmark behind ``exitwise bench engine``: the engine without HTTP.

For each batch size and each workload (every calibrated operating point, and the last exit
alone as the baseline) the test images go through the real :class:`~serving.engine.Engine`
(queue, worker thread, stage loop with row removal): at batch 1 one image at a time, batched
with the whole set queued so the worker forms full batches. Workloads and the oracle's
measurements are interleaved over the repeats so that a change in machine load hits all of them
alike; times are means over the repeats. The garbage collector runs as in the server (start-up
frozen, no full collection): a full collection of the loaded process took about 110 ms here, and
one fell inside a timed run of 2,000 images now and then (55 us per image more for that run).

Definitions (DESIGN.md "Benchmarks"):

- MFLOPs-efficiency = (time at the last exit / time at the budget) / (last exit's MFLOPs / the
  budget's realised mean MFLOPs);
- oracle time of an image leaving at exit k = time to run stages 1..k (blocks and heads) for a
  full batch of the size in use, divided by the batch size; oracle efficiency = the workload's
  oracle time / its measured time.

The engine alone, at batch 1: the same engine over a runner whose stages cost nothing
(:class:`NoNetwork`), every image leaving at exit 1 and every image running all K stages: what
the engine's own work costs per image, and per stage beyond the first. That bounds the oracle
efficiency an operating point can reach: its oracle time over that time plus the engine's.
(Batched, the figure says little: with stages that cost nothing, how the submitting thread and
the worker share the interpreter decides the batches, and it varied twofold between runs.)
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from exitwise.runtime import StageRunner
from serving.budget.resolve import BudgetResolver, ExitPlan
from serving.collector import as_served
from serving.engine import Engine
from serving.jobs import Ticket

from .machine import sync
from .tables import markdown_table


@dataclass(frozen=True)
class Workload:
    label: str
    plan: ExitPlan


def workloads(resolver: BudgetResolver) -> list[Workload]:
    k = resolver.num_exits
    out = [Workload("last exit", resolver.resolve(max_exit=k))]
    for p in resolver.points:
        plan = resolver.resolve(budget_mflops=p.expected_mflops)
        out.append(Workload(f"{p.name} ({p.expected_mflops:.3g} MFLOPs)", plan))
    return out


@torch.inference_mode()
def oracle_samples(runner: StageRunner, images: Tensor, batch: int, rounds: int) -> np.ndarray:
    """Seconds per image to run stages 1..k (blocks and heads) on a full batch: ``[rounds, K]``.

    The exits alternate within each round, so a change in machine load hits them alike.
    """
    x = images[:batch]
    if x.shape[0] < batch:
        raise ValueError(f"need at least {batch} images")
    out = np.zeros((rounds, runner.num_exits))
    for r in range(rounds):
        for k in range(runner.num_exits):
            sync(runner.device)
            t0 = time.perf_counter()
            state = runner.initial_state(x)
            for j in range(k + 1):
                state, logits = runner.run_stage(j, state)
            logits.cpu()
            out[r, k] = (time.perf_counter() - t0) / batch
    return out


async def _measure(engine: Engine, images: Tensor, plan: ExitPlan, batch: int) -> dict[str, Any]:
    n = images.shape[0]
    now = time.monotonic()
    ticket = Ticket(plan, 0, now, now + 3600)
    latencies: list[float] = []
    t0 = time.perf_counter()
    if batch == 1:
        outcomes = []
        for i in range(n):
            s = time.perf_counter()
            outcomes.append(await engine.infer(ticket, images[i : i + 1]))
            latencies.append(time.perf_counter() - s)
    else:
        jobs = [engine.submit(ticket, images[i : i + 1]) for i in range(n)]
        outcomes = [await job.future for job in jobs]
    wall = time.perf_counter() - t0
    exits = np.concatenate([o.exit for o in outcomes])
    return {"wall": wall, "latencies": latencies, "exits": exits}


class NoNetwork:
    """A stage runner whose stages cost nothing: the state passes through, and every stage's
    logits (two classes) say the first with a confidence of nearly 1."""

    backend, provider = "none", "none"

    def __init__(self, num_exits: int) -> None:
        self.num_exits, self.device = num_exits, torch.device("cpu")

    def initial_state(self, images: Tensor) -> list[Tensor]:
        return [images]

    def run_stage(self, index: int, state: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        logits = torch.zeros((state[0].shape[0], 2))
        logits[:, 0] = 10.0
        return state, logits


def _bench_engine(runner: StageRunner, resolver: BudgetResolver, batch: int, n: int) -> Engine:
    """An engine as measured here: batches of ``batch`` formed without waiting, room for all
    ``n`` images at once."""
    return Engine(
        runner,
        exit_mflops=list(resolver.exit_mflops),
        max_batch_size=batch,
        max_wait_s=0.0,
        max_queue_images=max(n, batch),
    )


def engine_alone(
    resolver: BudgetResolver, images: Tensor, batch: int, repeats: int
) -> dict[str, float]:
    """Microseconds per image through the engine over :class:`NoNetwork`: leaving at exit 1
    (``max_exit=1``) and running all K stages (``max_exit=K``), and their difference per stage
    beyond the first."""
    k = resolver.num_exits
    engine = _bench_engine(NoNetwork(k), resolver, batch, len(images))  # type: ignore[arg-type]
    engine.start()
    try:
        plans = {"exit_1": resolver.resolve(max_exit=1), "last_exit": resolver.resolve(max_exit=k)}
        for plan in plans.values():  # untimed: the worker's and the loop's first calls
            asyncio.run(_measure(engine, images[:8], plan, batch))
        walls: dict[str, list[float]] = {name: [] for name in plans}
        for _ in range(repeats):  # interleaved, as the workloads
            for name, plan in plans.items():
                walls[name].append(asyncio.run(_measure(engine, images, plan, batch))["wall"])
    finally:
        engine.stop()
    us = {name: statistics.fmean(w) / len(images) * 1e6 for name, w in walls.items()}
    per_stage = (us["last_exit"] - us["exit_1"]) / max(1, k - 1)
    return {"exit_1_us": us["exit_1"], "last_exit_us": us["last_exit"], "per_stage_us": per_stage}


def run_engine_bench(
    runner: StageRunner,
    resolver: BudgetResolver,
    images: Tensor,
    batch_sizes: list[int],
    repeats: int = 3,
    batch1_images: int = 500,
) -> dict[str, Any]:
    """Rows per (batch size, workload), plus the oracle per-exit times per batch size; under
    the server's garbage-collector schedule (:func:`serving.collector.as_served`)."""
    with as_served():
        return _run_all(runner, resolver, images, batch_sizes, repeats, batch1_images)


def _run_all(
    runner: StageRunner,
    resolver: BudgetResolver,
    images: Tensor,
    batch_sizes: list[int],
    repeats: int,
    batch1_images: int,
) -> dict[str, Any]:
    exit_mflops = np.array(resolver.exit_mflops)
    loads = workloads(resolver)
    rows: list[dict[str, Any]] = []
    oracle: dict[str, list[float]] = {}
    alone: dict[str, float] | None = None
    for batch in batch_sizes:
        subset = images[:batch1_images] if batch == 1 else images
        engine = _bench_engine(runner, resolver, batch, len(subset))
        engine.warm_up(tuple(images.shape[1:]), (batch,))  # type: ignore[arg-type]
        engine.start()
        # Enough oracle rounds to weigh about as much machine time as one workload run.
        rounds = max(5, min(200, len(subset) // (2 * batch)))
        try:
            samples: dict[str, list[dict[str, Any]]] = {w.label: [] for w in loads}
            oracle_runs = []
            for _ in range(repeats):
                # Oracle and workloads interleaved, so load drift hits all of them alike.
                oracle_runs.append(oracle_samples(runner, images, batch, rounds))
                for w in loads:
                    samples[w.label].append(asyncio.run(_measure(engine, subset, w.plan, batch)))
            oracle[str(batch)] = np.concatenate(oracle_runs).mean(axis=0).tolist()
        finally:
            engine.stop()
        if batch == 1:
            alone = engine_alone(resolver, subset, batch, repeats)
        base_time: float | None = None
        base_mflops = 0.0
        for w in loads:
            runs = samples[w.label]
            wall = statistics.fmean(r["wall"] for r in runs)
            exits = runs[0]["exits"]
            n = len(exits)
            mean_mflops = float(exit_mflops[exits].mean())
            per_image = wall / n
            if base_time is None:
                base_time, base_mflops = per_image, mean_mflops
            oracle_time = float(np.mean(np.array(oracle[str(batch)])[exits]))
            lat = np.array([x for r in runs for x in r["latencies"]]) * 1000
            speedup = base_time / per_image
            ratio = base_mflops / mean_mflops
            rows.append(
                {
                    "batch_size": batch,
                    "workload": w.label,
                    "images": n,
                    "images_per_s": 1.0 / per_image,
                    "ms_per_image": per_image * 1000,
                    "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
                    "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
                    "mean_mflops": mean_mflops,
                    "exit_histogram": {
                        str(k + 1): int(c)
                        for k, c in enumerate(np.bincount(exits, minlength=len(exit_mflops)))
                    },
                    "speedup": speedup,
                    "mflops_ratio": ratio,
                    "mflops_efficiency": speedup / ratio,
                    "oracle_ms_per_image": oracle_time * 1000,
                    "oracle_efficiency": oracle_time / per_image,
                }
            )
    return {"rows": rows, "oracle_seconds_per_image": oracle, "engine_alone": alone}


def alone_line(alone: dict[str, float] | None) -> str:
    """The engine-alone figures in a sentence ("" when batch 1 was not measured)."""
    if alone is None:
        return ""
    return (
        f"The engine alone (no network), batch 1: {alone['exit_1_us']:.0f} us per image leaving "
        f"at exit 1, {alone['last_exit_us']:.0f} us through all stages "
        f"({alone['per_stage_us']:.0f} us per stage beyond the first)."
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    header = [
        "batch", "workload", "images/s", "ms/image", "p50 ms", "p99 ms", "mean MFLOPs",
        "speed-up", "MFLOPs ratio", "MFLOPs-eff.", "oracle ms/image", "oracle eff.", "exits",
    ]  # fmt: skip
    cells = []
    for r in rows:
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}"
        exits = " ".join(f"{k}:{v}" for k, v in r["exit_histogram"].items())
        cells.append(
            [
                r["batch_size"],
                r["workload"],
                f"{r['images_per_s']:.1f}",
                f"{r['ms_per_image']:.3f}",
                p50,
                p99,
                f"{r['mean_mflops']:.3f}",
                f"{r['speedup']:.2f}",
                f"{r['mflops_ratio']:.2f}",
                f"{r['mflops_efficiency']:.2f}",
                f"{r['oracle_ms_per_image']:.3f}",
                f"{r['oracle_efficiency']:.2f}",
                exits,
            ]
        )
    return markdown_table(header, cells)
