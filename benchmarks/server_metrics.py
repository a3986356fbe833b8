"""What a server under load did, read from its own ``/metrics``: the benchmarks' view of it.

The load clients do not parse the responses (``wrk`` would have to call into Lua for every
one): the exits taken, MFLOPs per image, stop reasons and answers by status come from the
difference of two scrapes, before and after a run (:func:`scrape`, :func:`served`), and
:class:`MetricsSampler` follows the degradation level and the queue during a run.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from exitwise.errors import ExitwiseError


def scrape(
    url: str, headers: dict[str, str] | None = None, client: Any = None, timeout_s: float = 10.0
) -> dict[str, float]:
    """The server's exitwise_* samples (``name{labels}`` -> value) from ``/metrics``
    (through ``client``, an ``httpx.Client``, if given)."""
    import httpx

    get = httpx.get if client is None else client.get
    r = get(f"{url.rstrip('/')}/metrics", headers=headers, timeout=timeout_s)
    if r.status_code != 200:
        raise ExitwiseError(f"{url}/metrics answered {r.status_code}")
    return parse_metrics(r.text)


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("exitwise_", "process_cpu_seconds_total ")):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _label(key: str, name: str) -> str:
    return key.split(f'{name}="', 1)[1].split('"', 1)[0]


def _classify_codes(samples: dict[str, float]) -> dict[str, float]:
    return {
        _label(key, "code"): value
        for key, value in samples.items()
        if key.startswith("exitwise_requests_total{") and 'route="/v1/classify"' in key
    }


def served(before: dict[str, float], after: dict[str, float], num_exits: int) -> dict[str, Any]:
    """What the server did between two scrapes: images per exit, MFLOPs, why the images
    stopped, answers by status, why it refused requests (503s), images served at a cheaper
    point than asked, CPU seconds (the process's, the engine worker's)."""
    exits = {
        str(k): int(
            after.get(f'exitwise_exits_total{{exit="{k}"}}', 0)
            - before.get(f'exitwise_exits_total{{exit="{k}"}}', 0)
        )
        for k in range(1, num_exits + 1)
    }
    images = sum(exits.values())
    mflops = after.get("exitwise_mflops_per_image_sum", 0) - before.get(
        "exitwise_mflops_per_image_sum", 0
    )
    was, now = _classify_codes(before), _classify_codes(after)
    codes = {code: int(value - was.get(code, 0.0)) for code, value in now.items()}
    degraded = {
        _label(key, "operating_point"): int(value - before.get(key, 0.0))
        for key, value in after.items()
        if key.startswith("exitwise_degraded_total{")
    }
    stops = {
        _label(key, "reason"): int(value - before.get(key, 0.0))
        for key, value in after.items()
        if key.startswith("exitwise_stops_total{")
    }
    refused = {
        _label(key, "reason"): int(value - before.get(key, 0.0))
        for key, value in after.items()
        if key.startswith("exitwise_refused_total{")
    }
    # CPU seconds of the whole server and of its engine worker (None where not exported).
    cpu = {
        name: after[key] - before.get(key, 0.0) if key in after else None
        for name, key in (
            ("process", "process_cpu_seconds_total"),
            ("engine", "exitwise_engine_cpu_seconds_total"),
        )
    }
    return {
        "over_250ms": _over(before, after, "0.25"),
        "exit_histogram": {k: v for k, v in exits.items() if v},
        "images": images,
        "mean_mflops": mflops / images if images else float("nan"),
        "statuses": {k: v for k, v in sorted(codes.items()) if v},
        "degraded": {k: v for k, v in degraded.items() if v},
        "stops": {k: v for k, v in sorted(stops.items()) if v},
        "refused": {k: v for k, v in sorted(refused.items()) if v},
        "cpu_s": cpu,
    }


def _over(before: dict[str, float], after: dict[str, float], le: str) -> int | None:
    """Requests to /v1/classify the server took longer than ``le`` seconds over (a bucket
    bound of exitwise_request_duration_seconds; None where it is not exported): from its
    arrival stamp to the response sent, so a client's slower figure is time the server never
    saw (the kernel, the network, the client)."""
    name = "exitwise_request_duration_seconds_bucket"
    keys = [f'{name}{{le="{b}",route="/v1/classify"}}' for b in (le, "+Inf")]
    if not all(k in after for k in keys):
        return None
    over = [after[k] - before.get(k, 0.0) for k in keys]
    return int(over[1] - over[0])


def load_point(samples: dict[str, float]) -> tuple[float, float, float, float]:
    """From one scrape: the degradation level (given to the latest request), images served
    degraded so far, 503s of /v1/classify so far, and images queued in front of the stages."""
    level = samples.get("exitwise_degradation_level", 0.0)
    degraded = sum(v for k, v in samples.items() if k.startswith("exitwise_degraded_total{"))
    refused = _classify_codes(samples).get("503", 0.0)
    queued = sum(v for k, v in samples.items() if k.startswith("exitwise_stage_queue_depth{"))
    return level, degraded, refused, queued


class MetricsSampler:
    """Scrapes ``/metrics`` every ``every_s`` on a thread while the ``with`` block runs: the
    degradation level over time, with the images served degraded and the 503s since the start
    and the queued images. A scrape that fails or takes more than two periods is skipped."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, every_s: float = 0.25):
        self.url, self.headers, self.every_s = url, headers, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._points: list[tuple[float, float, float, float, float]] = []

    def __enter__(self) -> MetricsSampler:
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        import httpx

        tick = self._start
        # One kept-alive connection: an overloaded server's accept queue is not in the way.
        with httpx.Client() as client:
            while not self._stop.is_set():
                try:
                    samples = scrape(self.url, self.headers, client, timeout_s=2 * self.every_s)
                except Exception:  # a busy server may be slow to answer: the next one counts
                    samples = None
                if samples is not None:
                    self._points.append((time.monotonic() - self._start, *load_point(samples)))
                tick = max(tick + self.every_s, time.monotonic() - self.every_s)
                self._stop.wait(max(0.0, tick - time.monotonic()))

    def series(self) -> dict[str, list[float]]:
        """``t`` (s since the start), ``level``, and since the first sample ``degraded``
        (images) and ``refused`` (503s); ``queued`` (images)."""
        if not self._points:
            return {"t": [], "level": [], "degraded": [], "refused": [], "queued": []}
        t, level, degraded, refused, queued = (list(x) for x in zip(*self._points, strict=True))
        return {
            "t": [round(x, 3) for x in t],
            "level": level,
            "degraded": [x - degraded[0] for x in degraded],
            "refused": [x - refused[0] for x in refused],
            "queued": queued,
        }
