"""The protocol-agnostic data plane: budgets, decoding, the engine, and what a prediction says.

REST v1 and Open Inference Protocol v2 are thin layers over :class:`ModelService`: they parse
their wire format, call :meth:`ModelService.classify_encoded` or
:meth:`ModelService.classify_tensor`, and render the :class:`Classification`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from torch import Tensor

from exitwise import __version__

from .budgets import ExitPlan
from .engine import Arrival, Engine
from .errors import (
    BadRequestError,
    DeadlineExceededError,
    InvalidParameterError,
    PayloadTooLargeError,
)
from .images import decode_images, tensor_images
from .loading import LoadedModel
from .metrics import Metrics
from .settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Prediction:
    class_id: int
    class_name: str
    confidence: float
    exit: int  # 1-based
    mflops: float  # cumulative cost of that exit
    top: list[tuple[int, str, float]]  # (class id, class name, probability), best first


@dataclass(frozen=True)
class Classification:
    predictions: list[Prediction]
    plan: ExitPlan
    decode_seconds: float
    queue_seconds: float
    compute_seconds: float

    @property
    def mean_mflops(self) -> float:
        return float(np.mean([p.mflops for p in self.predictions]))

    def server_timing(self, started: float) -> str:
        """A ``Server-Timing`` header value (milliseconds): where the request's time went.

        ``app`` is the whole handler since ``started`` (``time.monotonic()``: body, decoding,
        queue, compute), ``compute`` the batch (or batches) the images ran in.
        """
        parts = (
            ("app", time.monotonic() - started),
            ("decode", self.decode_seconds),
            ("queue", self.queue_seconds),
            ("compute", self.compute_seconds),
        )
        return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in parts)


class ModelService:
    def __init__(self, settings: Settings, loaded: LoadedModel, metrics: Metrics) -> None:
        self.settings = settings
        self.loaded = loaded
        self.metrics = metrics
        manifest = loaded.bundle.manifest
        self.manifest = manifest
        self.name = settings.model_name or manifest.name
        self.resolver = loaded.resolver
        self.runner = loaded.runner
        self.class_names = list(manifest.class_names)
        self.exit_mflops = manifest.exit_mflops
        self.preprocessing = manifest.preprocessing
        self.engine = Engine(
            loaded.runner,
            exit_mflops=self.exit_mflops,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_s,
            max_queue_images=settings.max_queue_images,
            metrics=metrics,
        )
        self._executor = ThreadPoolExecutor(
            settings.decode_threads, thread_name_prefix="exitwise-decode"
        )
        metrics.describe_model(
            self.name,
            loaded.runner.backend,
            str(loaded.runner.device),
            loaded.runner.provider,
            manifest.num_exits,
        )

    # --- life cycle ------------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, int, int]:
        p = self.preprocessing
        return (p.channels, p.input_size, p.input_size)

    def start(self) -> None:
        """Warm up (blocking) and start the engine's worker."""
        self.engine.warm_up(self.input_shape)
        self.engine.start()

    def stop(self) -> None:
        """Finish everything queued, then release the worker and the decode threads."""
        self.engine.stop(timeout=self.settings.request_timeout_s + 5)
        self._executor.shutdown(wait=True)

    # --- requests --------------------------------------------------------------------------------

    def resolve(self, budget_mflops: float | None, max_exit: int | None) -> ExitPlan:
        return self.resolver.resolve(budget_mflops, max_exit)

    def check_top_k(self, top_k: int | None) -> int:
        n = len(self.class_names)
        if top_k is None:
            return min(self.settings.default_top_k, n)
        if not 0 <= top_k <= n:
            raise InvalidParameterError(f"top_k must be between 0 and {n}, not {top_k}")
        return top_k

    def check_count(self, n: int) -> None:
        if n < 1:
            raise BadRequestError("the request holds no image")
        limit = self.settings.max_images_per_request
        if n > limit:
            raise PayloadTooLargeError(f"{n} images in one request; the limit is {limit}")

    def deadline(self, started: float, client_timeout_s: float | None = None) -> float:
        """The request's deadline: the server's limit, or the client's if that is shorter."""
        timeout = self.settings.request_timeout_s
        if client_timeout_s is not None:
            timeout = min(timeout, client_timeout_s)
        return started + timeout

    async def within(self, awaitable: Awaitable[T], deadline: float, doing: str) -> T:
        """``awaitable``'s result, or a 504 when ``deadline`` passes first."""
        try:
            return await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise DeadlineExceededError(f"the request deadline passed while {doing}") from None

    async def off_loop(self, fn: Callable[[], T], deadline: float, doing: str) -> T:
        """Run CPU-bound ``fn`` (decoding, parsing) in the decode pool, never on the loop."""
        loop = asyncio.get_running_loop()
        return await self.within(loop.run_in_executor(self._executor, fn), deadline, doing)

    async def classify_encoded(
        self,
        blobs: Sequence[bytes],
        plan: ExitPlan,
        top_k: int,
        deadline: float,
        labels: Sequence[str] | None = None,
    ) -> Classification:
        """Encoded images (PNG, JPEG, ...): decode off the loop, then classify."""
        self.check_count(len(blobs))
        start = time.monotonic()
        spec, max_pixels = self.preprocessing, self.settings.max_image_pixels
        # While decoding, the engine knows these images are coming and may hold a batch open
        # for them (at most max_wait_ms).
        with self.engine.expecting() as arrival:
            images = await self.off_loop(
                lambda: decode_images(blobs, spec, max_pixels, labels),
                deadline,
                "decoding the images",
            )
            decode_seconds = time.monotonic() - start
            return await self._classify(images, plan, top_k, deadline, decode_seconds, arrival)

    async def classify_tensor(
        self, array: np.ndarray, plan: ExitPlan, top_k: int, deadline: float
    ) -> Classification:
        """An already normalised FP32 ``[N, C, H, W]`` batch."""
        self.check_count(int(array.shape[0]) if array.ndim else 0)
        start = time.monotonic()
        spec = self.preprocessing
        images = await self.off_loop(
            lambda: tensor_images(array, spec), deadline, "checking the input tensor"
        )
        return await self._classify(images, plan, top_k, deadline, time.monotonic() - start)

    async def _classify(
        self,
        images: Tensor,
        plan: ExitPlan,
        top_k: int,
        deadline: float,
        decode_seconds: float,
        arrival: Arrival | None = None,
    ) -> Classification:
        outcome = await self.engine.infer(images, plan, top_k, deadline, arrival)
        names = self.class_names
        predictions = [
            Prediction(
                class_id=r.class_id,
                class_name=names[r.class_id],
                confidence=r.confidence,
                exit=r.exit_index + 1,
                mflops=self.exit_mflops[r.exit_index],
                top=[(c, names[c], p) for c, p in r.top],
            )
            for r in outcome.results
        ]
        return Classification(
            predictions=predictions,
            plan=plan,
            decode_seconds=decode_seconds,
            queue_seconds=outcome.queue_seconds,
            compute_seconds=outcome.compute_seconds,
        )

    # --- description -----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` returns."""
        m = self.manifest
        cal = self.loaded.calibration
        anytime = {a.exit: a for a in cal.anytime} if cal else {}
        exits = []
        for e in m.exits:
            item: dict[str, Any] = {"exit": e.exit, "mflops": e.mflops, "params_m": e.params_m}
            if e.exit in anytime:
                item["heldout_accuracy"] = anytime[e.exit].heldout_top1
                item["test_accuracy"] = anytime[e.exit].test_top1
            exits.append(item)
        points = []
        for p in self.resolver.points:
            points.append(
                {
                    "name": p.name,
                    "target_mflops": p.target_mflops,
                    "expected_mflops": p.expected_mflops,
                    "thresholds": p.thresholds,
                    "heldout": p.heldout.model_dump(),
                    "test": p.test.model_dump() if p.test else None,
                }
            )
        budget_range = self.resolver.budget_range
        s = self.settings
        return {
            "name": self.name,
            "version": "1",
            "exitwise_version": __version__,
            "arch": m.arch,
            "preset": m.preset,
            "dataset": m.dataset,
            "num_classes": m.num_classes,
            "class_names": m.class_names,
            "input": {
                "channels": m.preprocessing.channels,
                "size": m.preprocessing.input_size,
                "preprocessing": m.preprocessing.model_dump(mode="json"),
            },
            "weights_sha256": m.weights.sha256,
            "exits": exits,
            "calibrated": cal is not None,
            "operating_points": points,
            "default_operating_point": cal.default_operating_point if cal else None,
            "budget_mflops_range": list(budget_range) if budget_range else None,
            "default_plan": self.resolver.resolve().describe(),
            "backend": self.runner.backend,
            "device": str(self.runner.device),
            "provider": self.runner.provider,
            "limits": {
                "max_batch_size": s.max_batch_size,
                "max_wait_ms": s.max_wait_ms,
                "max_queue_images": s.max_queue_images,
                "max_images_per_request": s.max_images_per_request,
                "max_body_bytes": s.max_body_bytes,
                "max_image_pixels": s.max_image_pixels,
                "request_timeout_s": s.request_timeout_s,
            },
        }
