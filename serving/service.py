"""The protocol-agnostic data plane: one entry per request kind.

REST v1 and Open Inference Protocol v2 only decode their wire format into a
:class:`ClassifyRequest` and encode the :class:`ClassifyResult`; everything between (the
deadline, the budget's plan, top-k, the image count, decoding off the event loop, the engine,
and what a prediction says) happens in :meth:`ModelService.classify`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from exitwise.preprocess import normalize

from .budget_control import BudgetControl
from .budgets import ExitPlan
from .control import ControlSettings
from .deadlines import before
from .degrade import Degrader
from .engine import Encoded, Engine, InferOutcome
from .errors import BadRequestError, InvalidParameterError, PayloadTooLargeError
from .images import decode_images, decode_pixels, tensor_images
from .jobs import StopReason
from .live import LiveStats
from .loading import LoadedModel
from .metrics import Metrics
from .params import RequestParams
from .settings import Settings
from .threads import decode_threads

T = TypeVar("T")

# A deadline_ms answer is due this much before the deadline itself: what follows the engine
# (building the response, sending it) takes a fraction of it.
ANSWER_MARGIN_S = 0.001


@dataclass(frozen=True)
class ClassifyRequest:
    """One request, decoded from its wire format: either encoded images or a ready tensor."""

    started: float  # time.monotonic() when the handler began
    params: RequestParams
    encoded: Sequence[bytes] = ()  # PNG, JPEG, ... (decoded and preprocessed here)
    tensor: np.ndarray | None = None  # or an already normalised FP32 [N, C, H, W] batch
    labels: Sequence[str] | None = None  # per image, for error messages (e.g. file names)


@dataclass(frozen=True)
class Prediction:
    class_id: int
    class_name: str
    confidence: float
    exit: int  # 1-based
    mflops: float  # cumulative cost of that exit
    top: list[tuple[int, str, float]]  # (class id, class name, probability), best first
    stopped: StopReason = "confident"  # why it left there: confident, cap or deadline


@dataclass(frozen=True)
class Ticket:
    """What admission decided for a request: its plan, top-k and deadlines."""

    plan: ExitPlan
    top_k: int
    deadline: float  # time.monotonic(): the request timeout (504 past it)
    answer_by: float | None  # time.monotonic(): deadline_ms, answered by then


@dataclass(frozen=True)
class ClassifyResult:
    predictions: list[Prediction]
    plan: ExitPlan
    started: float
    decode_seconds: float
    queue_seconds: float
    compute_seconds: float

    @property
    def mean_mflops(self) -> float:
        return float(np.mean([p.mflops for p in self.predictions]))

    def server_timing(self) -> str:
        """A ``Server-Timing`` header value (milliseconds): where the request's time went.

        ``app`` is the whole handler so far (body, decoding, queue, compute), ``compute`` the
        batch (or batches) the images ran in.
        """
        parts = (
            ("app", time.monotonic() - self.started),
            ("decode", self.decode_seconds),
            ("queue", self.queue_seconds),
            ("compute", self.compute_seconds),
        )
        return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in parts)


class ModelService:
    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel,
        metrics: Metrics,
        live: LiveStats | None = None,
    ) -> None:
        self.settings = settings
        self.loaded = loaded
        self.metrics = metrics
        self.live = live
        manifest = loaded.bundle.manifest
        self.manifest = manifest
        self.name = settings.model_name or manifest.name
        self.resolver = loaded.resolver
        self.runner = loaded.runner
        self.control = BudgetControl(
            loaded.calibration,
            loaded.resolver.points,
            ControlSettings(
                window=settings.budget_control_window,
                tolerance=settings.budget_control_tolerance,
            ),
            enabled=settings.budget_control == "on",
        )
        self.control.register(metrics.registry)
        high = settings.degrade_queue_ms / 1000
        self.degrader = Degrader(
            max_level=len(loaded.resolver.points),
            high_s=high,
            low_s=high / 4,
            hold_s=settings.degrade_hold_ms / 1000,
        )
        self.class_names = list(manifest.class_names)
        self.exit_mflops = manifest.exit_mflops
        self.preprocessing = spec = manifest.preprocessing
        max_pixels = settings.max_image_pixels
        self.engine = Engine(
            loaded.runner,
            exit_mflops=self.exit_mflops,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_s,
            max_stage_wait_s=settings.max_stage_wait_s,
            max_queue_images=settings.max_queue_images,
            metrics=metrics,
            decode=lambda blobs, labels: decode_pixels(blobs, spec, max_pixels, labels),
            normalize=lambda pixels: normalize(pixels, spec),
        )
        # 0 decoding threads: the engine's worker decodes (see serving.threads). The pool also
        # parses large v2 JSON tensors off the loop; its threads start only when first used.
        threads = decode_threads(settings)
        self.decode_in_worker = threads == 0
        self._executor = ThreadPoolExecutor(max(1, threads), thread_name_prefix="exitwise-decode")
        metrics.describe_model(
            self.name,
            loaded.runner.backend,
            str(loaded.runner.device),
            loaded.runner.provider,
            manifest.num_exits,
        )
        # Every point a request can be stepped down to shows in /metrics at 0 from the start.
        for point in loaded.resolver.points:
            metrics.degraded.labels(operating_point=point.name)

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

    # --- the data plane ---------------------------------------------------------------------------

    async def receive(self, awaitable: Awaitable[T], started: float, doing: str) -> T:
        """Read (part of) a request under the server's deadline: for the routes' body reads."""
        return await self._within(awaitable, self._deadline(started), doing)

    async def parse(self, fn: Callable[[], T], started: float, doing: str) -> T:
        """Run a CPU-bound parse (a JSON tensor can hold millions of numbers) off the loop."""
        return await self._off_loop(fn, self._deadline(started), doing)

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Classify the request's images with its budget, cap and top-k, by its deadlines."""
        ticket = self._admit(request)
        if request.tensor is not None:
            result = await self._classify_tensor(request, ticket)
        else:
            result = await self._classify_encoded(request, ticket)
        plan = ticket.plan
        costs = [p.mflops for p in result.predictions]
        self.control.observe(plan, costs)
        if plan.degraded_from is not None and plan.operating_point is not None:
            self.metrics.degraded.labels(operating_point=plan.operating_point).inc(len(costs))
        if self.live is not None:
            exits = [p.exit for p in result.predictions]
            self.live.record(plan.name, time.monotonic() - request.started, exits, costs)
        return result

    def _admit(self, request: ClassifyRequest) -> Ticket:
        """The request's deadlines and plan: its budget's point, a cheaper one while the queue
        is long (if it allows), with budget control's thresholds."""
        params, started = request.params, request.started
        answer_by = None
        if params.deadline_s is not None:
            limit = self.settings.request_timeout_s
            if params.deadline_s > limit:
                raise InvalidParameterError(
                    f"deadline_ms must be at most the server's request timeout, {limit * 1000:g}"
                )
            # Refused only when it is known: shorter than exit 1 took on the idle device.
            first = self.engine.latency.floor(0, 1)
            if params.deadline_s < first:
                raise InvalidParameterError(
                    f"deadline_ms {params.deadline_s * 1000:g} is shorter than the first exit "
                    f"takes on this server (about {first * 1000:.2g} ms)"
                )
            answer_by = started + params.deadline_s - ANSWER_MARGIN_S
        plan = self.resolver.resolve(params.budget_mflops, params.max_exit)
        level = self.degrader.update(self.engine.queue_delay(), time.monotonic())
        self.metrics.degradation_level.set(level)
        allowed = params.degrade if params.degrade is not None else self.settings.degrade
        if level and allowed:
            plan = self.resolver.degrade(plan, level)
        plan = self.control.plan(plan, params.budget_control)
        deadline = self._deadline(started, params.timeout_s)
        return Ticket(plan, self._top_k(params.top_k), deadline, answer_by)

    # --- steps -----------------------------------------------------------------------------------

    def _top_k(self, top_k: int | None) -> int:
        n = len(self.class_names)
        if top_k is None:
            return min(self.settings.default_top_k, n)
        if not 0 <= top_k <= n:
            raise InvalidParameterError(f"top_k must be between 0 and {n}, not {top_k}")
        return top_k

    def _check_count(self, n: int) -> None:
        if n < 1:
            raise BadRequestError("the request holds no image")
        limit = self.settings.max_images_per_request
        if n > limit:
            raise PayloadTooLargeError(f"{n} images in one request; the limit is {limit}")

    def _deadline(self, started: float, client_timeout_s: float | None = None) -> float:
        """The request's deadline: the server's limit, or the client's if that is shorter."""
        timeout = self.settings.request_timeout_s
        if client_timeout_s is not None:
            timeout = min(timeout, client_timeout_s)
        return started + timeout

    async def _within(self, awaitable: Awaitable[T], deadline: float, doing: str) -> T:
        """``awaitable``'s result, or a 504 when ``deadline`` passes first."""
        with before(deadline, doing):
            return await awaitable

    async def _off_loop(self, fn: Callable[[], T], deadline: float, doing: str) -> T:
        """Run CPU-bound ``fn`` (decoding, parsing) in the decode pool, never on the loop."""
        loop = asyncio.get_running_loop()
        return await self._within(loop.run_in_executor(self._executor, fn), deadline, doing)

    async def _classify_encoded(self, request: ClassifyRequest, t: Ticket) -> ClassifyResult:
        """Encoded images (PNG, JPEG, ...): decoded by the engine's worker, or in the pool."""
        blobs, labels = request.encoded, request.labels
        self._check_count(len(blobs))
        if self.decode_in_worker:
            outcome = await self.engine.infer(
                Encoded(blobs, labels), t.plan, t.top_k, t.deadline, answer_by=t.answer_by
            )
            return self._result(request, t.plan, outcome, outcome.decode_seconds)
        start = time.monotonic()
        spec, max_pixels = self.preprocessing, self.settings.max_image_pixels
        # While decoding, the engine knows these images are coming and may hold a batch open
        # for them (at most max_wait_ms).
        with self.engine.expecting() as arrival:
            images = await self._off_loop(
                lambda: decode_images(blobs, spec, max_pixels, labels),
                t.deadline,
                "decoding the images",
            )
            decode_seconds = time.monotonic() - start
            outcome = await self.engine.infer(
                images, t.plan, t.top_k, t.deadline, arrival, t.answer_by
            )
        return self._result(request, t.plan, outcome, decode_seconds)

    async def _classify_tensor(self, request: ClassifyRequest, t: Ticket) -> ClassifyResult:
        """An already normalised FP32 ``[N, C, H, W]`` batch."""
        array = request.tensor
        assert array is not None  # the caller checked
        self._check_count(int(array.shape[0]) if array.ndim else 0)
        start = time.monotonic()
        spec = self.preprocessing
        images = await self._off_loop(
            lambda: tensor_images(array, spec), t.deadline, "checking the input tensor"
        )
        decode_seconds = time.monotonic() - start
        outcome = await self.engine.infer(
            images, t.plan, t.top_k, t.deadline, answer_by=t.answer_by
        )
        return self._result(request, t.plan, outcome, decode_seconds)

    def _result(
        self,
        request: ClassifyRequest,
        plan: ExitPlan,
        outcome: InferOutcome,
        decode_seconds: float,
    ) -> ClassifyResult:
        names = self.class_names
        mflops = self.exit_mflops
        predictions = [
            Prediction(
                class_id=r.class_id,
                class_name=names[r.class_id],
                confidence=r.confidence,
                exit=r.exit_index + 1,
                mflops=mflops[r.exit_index],
                top=[(c, names[c], p) for c, p in r.top],
                stopped=r.reason,
            )
            for r in outcome.results
        ]
        return ClassifyResult(
            predictions=predictions,
            plan=plan,
            started=request.started,
            decode_seconds=decode_seconds,
            queue_seconds=outcome.queue_seconds,
            compute_seconds=outcome.compute_seconds,
        )
