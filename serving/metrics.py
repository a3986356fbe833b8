"""Every Prometheus metric of the server, registered on a per-app ``CollectorRegistry``.

Names (prefix ``exitwise_``; histograms in seconds; labels kept low-cardinality):

- ``requests_total{route,code}``, ``request_duration_seconds{route}``: every HTTP request, by
  route template (``/v2/models/{name}/infer``, not the concrete path) and status code.
- ``queue_wait_seconds``: per image, from entering the engine's queue to its batch starting.
- ``compute_seconds``: per batch, running the network stage by stage (exit rule included).
- ``batch_size``: images per batch; ``stage_batch_size{stage}``: rows entering each stage, which
  shrink at later stages when images exit early.
- ``exits_total{exit}``: images served at each exit; ``mflops_per_image``: the cumulative cost
  of each image's exit.
- ``inflight_requests``: inference requests being handled; ``queue_depth``: images waiting.
- ``model_info{model,backend,device,provider}``: 1, labels describe what is served.

Series for every exit and stage exist from the start (at 0), so dashboards see them at once.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
            "Per image: time in the engine's queue before its batch starts.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute = Histogram(
            "exitwise_compute_seconds",
            "Per batch: time running the network stage by stage.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "exitwise_batch_size",
            "Images per batch.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.stage_batch_size = Histogram(
            "exitwise_stage_batch_size",
            "Rows entering each stage (1-based); smaller at later stages when images exit early.",
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
            "Images waiting in the engine's queue.",
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
        for k in range(1, num_exits + 1):
            self.exits.labels(exit=str(k))
            self.stage_batch_size.labels(stage=str(k))

    def record_batch(
        self, stage_rows: list[int], exit_counts: list[int], mflops: list[float], seconds: float
    ) -> None:
        """One finished batch: its stage sizes, exits, per-image costs and compute time."""
        self.batch_size.observe(stage_rows[0])
        self.compute.observe(seconds)
        for k, rows in enumerate(stage_rows, start=1):
            self.stage_batch_size.labels(stage=str(k)).observe(rows)
        for k, count in enumerate(exit_counts, start=1):
            if count:
                self.exits.labels(exit=str(k)).inc(count)
        for value in mflops:
            self.mflops_per_image.observe(value)
