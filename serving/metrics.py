"""Every Prometheus metric of the server, registered on a per-app ``CollectorRegistry``.

Names (prefix ``exitwise_``; histograms in seconds; labels kept low-cardinality):

- ``requests_total{route,code}``, ``request_duration_seconds{route}``: every HTTP request, by
  route template (``/v2/models/{name}/infer``, not the concrete path) and status code.
- ``queue_wait_seconds``: per request, from entering the engine to its first stage starting.
- ``compute_seconds``: per stage batch, running one stage and its exit rule.
- ``batch_size``: images per first-stage batch; ``stage_batch_size{stage}``: rows in each batch
  of each stage (survivors of several batches run together at later stages).
- ``exits_total{exit}``: images served at each exit; ``mflops_per_image``: the cumulative cost
  of each image's exit.
- ``inflight_requests``: inference requests being handled; ``queue_depth``: images waiting in
  front of any stage; ``stage_queue_depth{stage}``: rows waiting in front of each stage.
- ``stage_seconds{stage}``: per stage batch, its time; ``stops_total{reason}``: images answered
  by why they stopped (``confident``, ``cap``, ``deadline``, ``overload``).
- ``degraded_total{operating_point}``: images served at a cheaper point than asked, under load;
  ``degradation_level``: how many points the server steps down now.
- ``refused_total{reason}``: requests the server refused with a 503: ``queue_full``,
  ``deadline_strict`` (``deadline_policy=strict``), ``deadline_shed`` (a deadline not even exit 1
  can meet with degradation at its cheapest point), ``not_ready`` (starting or draining).
- ``deadline_margin_seconds``: how long before its ``deadline_ms`` an answer is due now.
- ``gc_pause_seconds{generation}``: the garbage collector's pauses, which stop the whole process
  (the event loop and the engine's worker alike).
- ``engine_cpu_seconds_total``: CPU time of the engine's worker thread (as of its last batch);
  with the standard ``process_cpu_seconds_total`` (Linux), how the server's CPU is shared
  between the engine and everything else, the event loop's HTTP work above all.
- ``model_info{model,backend,device,provider}``: 1, labels describe what is served.

Series for every exit and stage exist from the start (at 0), so dashboards see them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .budget.control import BudgetControl

REASONS = ("confident", "cap", "deadline", "overload")  # the stop reasons, in the engine's order
# Why a 503 (the ``refusal`` of serving.errors' refusing errors), every one listed from the start.
REFUSALS = ("queue_full", "deadline_strict", "deadline_shed", "not_ready")

# Start below 1 ms: a small model's stage takes well under a millisecond on a GPU.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MFLOPS_BUCKETS = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
)  # fmt: skip


class Metrics:
    """The server's metrics; one instance per app, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # The standard process_* series (CPU seconds, resident memory, open files; Linux).
        ProcessCollector(registry=registry)
        # Per-exit and per-stage children, bound once in describe_model (a labels() lookup on
        # every stage batch would cost more than the update itself).
        self._exits: list[Counter] = []
        self._stage_rows: list[Histogram] = []
        self._stage_depth: list[Gauge] = []
        self._stage_seconds: list[Histogram] = []
        self._stops: dict[str, Counter] = {}
        self.requests = Counter(
            "exitwise_requests_total",
            "HTTP requests by route template and status code.",
            ("route", "code"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "exitwise_request_duration_seconds",
            "HTTP request duration by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "exitwise_queue_wait_seconds",
            "Per request: time in the engine's queue before its first stage starts.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute = Histogram(
            "exitwise_compute_seconds",
            "Per stage batch: time running one stage and its exit rule.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "exitwise_batch_size",
            "Images per batch of the first stage.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.stage_batch_size = Histogram(
            "exitwise_stage_batch_size",
            "Rows per batch of each stage (1-based).",
            ("stage",),
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.exits = Counter(
            "exitwise_exits_total",
            "Images served at each exit (1-based).",
            ("exit",),
            registry=registry,
        )
        self.mflops_per_image = Histogram(
            "exitwise_mflops_per_image",
            "Cumulative multiply-adds (millions) spent on each image.",
            buckets=MFLOPS_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "exitwise_inflight_requests",
            "Inference requests being handled.",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "exitwise_queue_depth",
            "Images waiting in front of any stage.",
            registry=registry,
        )
        self.stage_queue_depth = Gauge(
            "exitwise_stage_queue_depth",
            "Rows waiting in front of each stage (1-based).",
            ("stage",),
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "exitwise_stage_seconds",
            "Per stage batch: time running each stage (1-based) and its exit rule.",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stops = Counter(
            "exitwise_stops_total",
            "Images answered, by why they stopped: confident, cap (max_exit or the last exit), "
            "deadline (deadline_ms) or overload (a degradable image answered early to make room "
            "in a full queue).",
            ("reason",),
            registry=registry,
        )
        self._stops = {reason: self.stops.labels(reason=reason) for reason in REASONS}
        self.degraded = Counter(
            "exitwise_degraded_total",
            "Images served at a cheaper operating point than asked, because of queueing delay.",
            ("operating_point",),
            registry=registry,
        )
        self.refused = Counter(
            "exitwise_refused_total",
            "Inference requests refused with a 503, by why: queue_full, deadline_strict, "
            "deadline_shed (degradation at its cheapest point), not_ready.",
            ("reason",),
            registry=registry,
        )
        for reason in REFUSALS:
            self.refused.labels(reason=reason)
        self.degradation_level = Gauge(
            "exitwise_degradation_level",
            "Operating points the server steps down under load now (0: none).",
            registry=registry,
        )
        self.gc_pause = Histogram(
            "exitwise_gc_pause_seconds",
            "Garbage-collector pauses, by generation (2: the full collections, on a timer); the "
            "whole process waits.",
            ("generation",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._gc_pause = [self.gc_pause.labels(generation=str(g)) for g in range(3)]
        self.deadline_margin = Gauge(
            "exitwise_deadline_margin_seconds",
            "How long before its deadline_ms an answer is due now (learned from the answers).",
            registry=registry,
        )
        self.model_info = Gauge(
            "exitwise_model_info",
            "The model being served (value 1).",
            ("model", "backend", "device", "provider"),
            registry=registry,
        )

    def describe_model(
        self, model: str, backend: str, device: str, provider: str, num_exits: int
    ) -> None:
        """Set model_info and create the per-exit and per-stage series at zero."""
        self.model_info.labels(model=model, backend=backend, device=device, provider=provider).set(
            1
        )
        self._bind(num_exits)

    def _bind(self, num_exits: int) -> None:
        """Create (at 0) and keep the per-exit and per-stage series of exits 1..num_exits."""
        for k in range(len(self._exits) + 1, num_exits + 1):
            self._exits.append(self.exits.labels(exit=str(k)))
            self._stage_rows.append(self.stage_batch_size.labels(stage=str(k)))
            self._stage_depth.append(self.stage_queue_depth.labels(stage=str(k)))
            self._stage_seconds.append(self.stage_seconds.labels(stage=str(k)))

    def gc_paused(self, generation: int, seconds: float) -> None:
        if 0 <= generation < len(self._gc_pause):
            self._gc_pause[generation].observe(seconds)

    def record_stage(self, index: int, rows: int, seconds: float, waits: Sequence[float]) -> None:
        """One stage batch (0-based ``index``): its rows and time, and, for the first stage, how
        long each request it started had waited."""
        if index >= len(self._exits):
            self._bind(index + 1)
        if index == 0:
            self.batch_size.observe(rows)
        self.compute.observe(seconds)
        self._stage_seconds[index].observe(seconds)
        self._stage_rows[index].observe(rows)
        for wait in waits:
            self.queue_wait.observe(wait)

    def answered(
        self, exits: np.ndarray, reasons: np.ndarray, exit_mflops: Sequence[float]
    ) -> None:
        """Images answered: the 0-based exit each left at, and why (index into ``REASONS``)."""
        for index, count in enumerate(np.bincount(exits, minlength=len(exit_mflops)).tolist()):
            if count:
                if index >= len(self._exits):
                    self._bind(index + 1)
                self._exits[index].inc(count)
                _observe_many(self.mflops_per_image, exit_mflops[index], count)
        counts = np.bincount(reasons, minlength=len(REASONS)).tolist()
        for reason, count in zip(REASONS, counts, strict=True):
            if count:
                self._stops[reason].inc(count)

    def register_control(self, control: BudgetControl) -> None:
        """Budget control's figures, read from its controllers when Prometheus scrapes (a
        request pays nothing for them)."""
        self.registry.register(_ControlCollector(control))

    def watch_engine_cpu(self, seconds: Callable[[], float]) -> None:
        """The engine worker's CPU seconds, read from ``seconds`` when Prometheus scrapes."""
        self.registry.register(_EngineCpuCollector(seconds))

    def watch_queues(self, rows: Callable[[], list[int]]) -> None:
        """The queue depths, read from ``rows`` (rows waiting in front of each stage) when
        Prometheus scrapes: the engine pays nothing per queue operation."""
        self.queue_depth.set_function(lambda: sum(rows()))
        self._bind(len(rows()))
        for k, gauge in enumerate(self._stage_depth):
            gauge.set_function(lambda k=k: rows()[k])  # type: ignore[misc]


def _observe_many(histogram: Histogram, value: float, count: int) -> None:
    """``count`` observations of one ``value`` (every image leaving an exit costs the same):
    one update of the bucket and the sum instead of ``count`` calls."""
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if buckets is None or total is None or bounds is None:  # another prometheus_client
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    for i, bound in enumerate(bounds):
        if value <= bound:
            buckets[i].inc(count)
            break


class _EngineCpuCollector(Collector):
    def __init__(self, seconds: Callable[[], float]) -> None:
        self.seconds = seconds

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "exitwise_engine_cpu_seconds",
            "CPU time of the engine's worker thread, as of its last stage batch.",
            value=self.seconds(),
        )


class _ControlCollector(Collector):
    def __init__(self, control: BudgetControl) -> None:
        self.control = control

    def collect(self) -> Iterator[Metric]:
        realised = GaugeMetricFamily(
            "exitwise_realised_mflops_per_image",
            "Mean MFLOPs per image over the last window of images served with the point.",
            labels=["operating_point"],
        )
        spent = CounterMetricFamily(
            "exitwise_mflops_spent",
            "MFLOPs spent on images served with the point (no exit cap).",
            labels=["operating_point"],
        )
        budget = GaugeMetricFamily(
            "exitwise_budget_control_mflops",
            "Held-out budget whose thresholds the point serves (its expected cost: not moved).",
            labels=["operating_point"],
        )
        moves = CounterMetricFamily(
            "exitwise_budget_control_adjustments",
            "Moves of the point's thresholds by budget control.",
            labels=["operating_point", "direction"],
        )
        for state in self.control.states():
            name = state.point.name
            value = state.realised()
            if value is not None:
                realised.add_metric([name], value)
            spent.add_metric([name], state.spent)
            ctl = state.controller
            served = ctl.mixed_budget if ctl is not None else state.point.expected_mflops
            budget.add_metric([name], served)
            moves.add_metric([name, "dearer"], state.up)
            moves.add_metric([name, "cheaper"], state.down)
        yield from (realised, spent, budget, moves)
