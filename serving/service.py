"""The protocol-agnostic data plane: one entry per request kind, and what the routes show.

REST v1 and Open Inference Protocol v2 only decode their wire format into a
:class:`~serving.messages.ClassifyRequest` and encode the
:class:`~serving.messages.ClassifyResult`; everything between happens in
:meth:`ModelService.classify`: admission (the budget's plan, a cheaper one under load, budget
control's thresholds, the deadline's cap, the timeout: one :class:`~serving.jobs.Ticket`), the
engine, and what each prediction says. ``/v1/model`` asks :meth:`ModelService.describe`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from exitwise import __version__
from exitwise.preprocess import normalize

from . import deadlines
from .budget.control import BudgetControl
from .budget.controller import ControlSettings
from .budget.resolve import ExitPlan
from .budget.table import Traffic
from .degrade import Degrader
from .engine import Encoded, Engine
from .errors import BadRequestError, InvalidParameterError, PayloadTooLargeError
from .images import decode_images, decode_pixels, tensor_images
from .jobs import SERVER_STOPS, Outcome, Ticket
from .live import LiveStats
from .loading import LoadedModel
from .messages import ClassifyRequest, ClassifyResult, Prediction
from .metrics import Metrics
from .params import RequestParams
from .settings import Settings
from .threads import decode_threads
from .timeouts import before

T = TypeVar("T")


class ModelService:
    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel,
        metrics: Metrics,
        live: LiveStats | None = None,
    ) -> None:
        self.settings = s = settings
        self.loaded = loaded
        self.metrics = metrics
        self.live = live
        self.manifest = manifest = loaded.bundle.manifest
        self.name = s.model_name or manifest.name
        self.resolver = loaded.resolver
        self.runner = loaded.runner
        self.class_names = list(manifest.class_names)
        self.exit_mflops = manifest.exit_mflops
        self._costs = np.asarray(self.exit_mflops)
        self.preprocessing = spec = manifest.preprocessing
        window, tolerance = s.budget_control_window, s.budget_control_tolerance
        self.control = BudgetControl(
            loaded.calibration,
            loaded.resolver.points,
            ControlSettings(window=window, tolerance=tolerance),
            enabled=s.budget_control == "on",
        )
        self.degrader = Degrader(
            len(loaded.resolver.ladder), s.degrade_queue_ms / 1000, hold_s=s.degrade_hold_ms / 1000
        )
        self.margin = deadlines.Margin()
        self.overload = deadlines.Overload(s.degrade_shed_after_ms / 1000)
        self.engine = Engine(
            loaded.runner,
            exit_mflops=self.exit_mflops,
            max_batch_size=s.max_batch_size,
            max_wait_s=s.max_wait_s,
            max_stage_wait_s=s.max_stage_wait_s,
            max_queue_images=s.max_queue_images,
            metrics=metrics,
            decode=lambda blobs, labels: decode_pixels(blobs, spec, s.max_image_pixels, labels),
            normalize=lambda pixels: normalize(pixels, spec),
        )
        # 0 decoding threads: the engine's worker decodes (see serving.threads). The pool also
        # parses large v2 JSON tensors off the loop; its threads start only when first used.
        threads = decode_threads(s)
        self.decode_in_worker = threads == 0
        self._executor = ThreadPoolExecutor(max(1, threads), thread_name_prefix="exitwise-decode")
        metrics.describe_model(
            self.name, self.runner.backend, str(self.runner.device), self.runner.provider,
            manifest.num_exits,
        )  # fmt: skip
        metrics.register_control(self.control)
        # Read at each scrape: on an idle server both come down with no request to set them.
        metrics.degradation_level.set_function(self.degrader.current)
        metrics.deadline_margin.set_function(self.margin.current)
        # Every point a request can be stepped down to shows in /metrics at 0 from the start.
        for point in loaded.resolver.points:
            metrics.degraded.labels(operating_point=point.name)

    # --- life cycle ------------------------------------------------------------------------

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

    @property
    def accepting(self) -> bool:
        return self.engine.accepting

    # --- the data plane ------------------------------------------------------------------------

    def check_room(self, degrade: bool = True) -> None:
        """Refuse a request before its body is read while the engine cannot take even one
        image, nor (``degrade``: the request may allow degradation, as far as can be told
        before its parameters are read) make room for one: it would be refused at admission
        anyway, and under overload the event loop's time per refusal decides how much of the
        core is left for the answers."""
        self.engine.check_room(degrade=degrade)

    async def receive(self, awaitable: Awaitable[T], arrived: float, doing: str) -> T:
        """Read (part of) a request under the server's timeout: for the routes' body reads."""
        with before(self._expires(arrived), doing):
            return await awaitable

    async def parse(self, fn: Callable[[], T], arrived: float, doing: str) -> T:
        """Run a CPU-bound parse (a JSON tensor can hold millions of numbers) off the loop."""
        return await self._off_loop(fn, self._expires(arrived), doing)

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Classify the request's images with its budget, cap and top-k, by its deadlines."""
        n = len(request.encoded) if request.tensor is None else _count(request.tensor)
        if n < 1:
            raise BadRequestError("the request holds no image")
        if n > self.settings.max_images_per_request:
            raise PayloadTooLargeError(
                f"{n} images in one request; the limit is {self.settings.max_images_per_request}"
            )
        ticket = self._admit(request, n)
        try:
            outcome, decode_seconds = await self._infer(request, ticket)
        except BaseException:  # refused, failed, timed out, gone: never served
            self.control.refund(ticket.plan, n)
            raise
        result = self._result(request, ticket, outcome, decode_seconds + outcome.decode_seconds)
        # Only answers a client is still there to get teach the margin (see Margin).
        if (deadline_s := request.params.deadline_s) is not None and not request.left():
            self.margin.observe(deadline_s, time.monotonic() - request.arrived, ticket.late)
        self._observe(ticket.plan, result)
        return result

    async def _infer(self, request: ClassifyRequest, ticket: Ticket) -> tuple[Outcome, float]:
        """The engine's outcome for the request's images, and the seconds spent decoding them
        on the event loop's side (none when the worker decodes)."""
        if request.tensor is None and self.decode_in_worker:
            images = Encoded(request.encoded, request.labels)
            return await self.engine.infer(ticket, images, gone=request.gone), 0.0
        start, spec = time.monotonic(), self.preprocessing
        blobs, labels, array = request.encoded, request.labels, request.tensor
        limit = self.settings.max_image_pixels
        # While decoding, the engine knows these images are coming and may hold a batch open
        # for them (at most max_wait_ms).
        with self.engine.expecting() as arrival:
            if array is not None:
                work, doing = (lambda: tensor_images(array, spec)), "checking the tensor"
            else:
                work = lambda: decode_images(blobs, spec, limit, labels)  # noqa: E731
                doing = "decoding the images"
            pixels = await self._off_loop(work, ticket.expires, doing)
            decode_seconds = time.monotonic() - start
            outcome = await self.engine.infer(ticket, pixels, arrival, request.gone)
        return outcome, decode_seconds

    def _admit(self, request: ClassifyRequest, images: int) -> Ticket:
        """What the request gets: its budget's plan (a cheaper point while the forecast wait is
        long, if it allows) with budget control's thresholds, top-k, its timeout, and with a
        deadline_ms the deepest exit forecast to finish in time. Every parameter is checked
        (a 422) before anything counts the request: the degrader's level, the shedding gate, a
        refusal's 503 and budget control's share of dearer rows are for requests that can be
        served."""
        params, s = request.params, self.settings
        top_k = self._top_k(params.top_k)
        plan = self.resolver.resolve(params.budget_mflops, params.max_exit)
        if params.deadline_s is not None:
            first_exit_s = self.engine.latency.floor(0, 1)
            deadlines.check(params.deadline_s, s.request_timeout_s, first_exit_s, params.timeout_s)
        degrade = params.degrade if params.degrade is not None else s.degrade
        forecast, cheapest = None, False
        if params.deadline_s is not None or (degrade and self.degrader.max_level):
            forecast = self.engine.forecast(images, own=params.deadline_s is not None)
        if degrade and forecast is not None and self.degrader.max_level:
            fill = self.engine.queued_images / s.max_queue_images
            level = self.degrader.level(forecast.queued, fill)
            plan = self.resolver.degrade(plan, level)
            cheapest = level == self.degrader.max_level
        deadline, limit, late, strict_by = math.inf, None, False, math.inf
        if params.deadline_s is not None:
            if params.deadline_policy == "strict":
                strict_by = request.arrived + params.deadline_s
            assert forecast is not None
            margin = self.margin.of(params.deadline_s)
            deadline = deadlines.due(request.arrived, params.deadline_s, margin)
            limit, late = deadlines.admit(forecast, deadline)
            if degrade and self.degrader.max_level:  # every forecast, those refused below too
                self.overload.saw(late and cheapest)
            shed = cheapest and self.overload.standing()
            if late and (refusal := self._refusal(params, shed)) is not None:
                raise deadlines.refused(forecast, refusal)
        plan = self.control.plan(plan, params.budget_control, images, first_only=limit == 0)
        expires = self._expires(request.arrived, params.timeout_s)
        return Ticket(
            plan, top_k, request.arrived, expires, deadline, limit, late, strict_by, degrade
        )

    @staticmethod
    def _refusal(params: RequestParams, shed: bool) -> deadlines.Refusal | None:
        """Why a request whose deadline not even exit 1 can meet is refused (503), or None: it
        is answered late. Strict asks for the refusal. Degradation refuses it (``shed``) once the
        cheapest point is in force and the overload has stood (degrade before shedding,
        :class:`~serving.deadlines.Overload`): the server is overloaded past what it can cheapen,
        and a late answer would only make the requests behind it late as well."""
        if params.deadline_policy == "strict":
            return deadlines.STRICT
        if shed:
            return deadlines.SHED
        return None

    def _observe(self, plan: ExitPlan, result: ClassifyResult) -> None:
        """What the answer tells budget control, the degradation counter and the live page."""
        mflops = [p.mflops for p in result.predictions]
        self.control.observe(plan, mflops, result.traffic)
        if plan.degraded_from is not None and plan.operating_point is not None:
            self.metrics.degraded.labels(operating_point=plan.operating_point).inc(len(mflops))
        if self.live is not None:
            exits = [p.exit for p in result.predictions]
            spent = time.monotonic() - result.arrived
            self.live.record(plan.name, spent, exits, mflops)

    # --- steps ------------------------------------------------------------------------------

    def _top_k(self, top_k: int | None) -> int:
        n = len(self.class_names)
        if top_k is None:
            return min(self.settings.default_top_k, n)
        if not 0 <= top_k <= n:
            raise InvalidParameterError(f"top_k must be between 0 and {n}, not {top_k}")
        return top_k

    def _expires(self, arrived: float, client_timeout_s: float | None = None) -> float:
        """The request's timeout: the server's limit, or the client's if that is shorter."""
        timeout = self.settings.request_timeout_s
        if client_timeout_s is not None:
            timeout = min(timeout, client_timeout_s)
        return arrived + timeout

    async def _off_loop(self, fn: Callable[[], T], expires: float, doing: str) -> T:
        """Run CPU-bound ``fn`` (decoding, parsing) in the decode pool, never on the loop."""
        loop = asyncio.get_running_loop()
        with before(expires, doing):
            return await loop.run_in_executor(self._executor, fn)

    def _result(
        self, request: ClassifyRequest, ticket: Ticket, outcome: Outcome, decode_seconds: float
    ) -> ClassifyResult:
        names, mflops = self.class_names, self.exit_mflops
        top_ids, top_probs = outcome.top_ids.tolist(), outcome.top_probs.tolist()
        predictions = [
            Prediction(
                class_id=c,
                class_name=names[c],
                confidence=conf,
                exit=e + 1,
                mflops=mflops[e],
                top=[(i, names[i], p) for i, p in zip(ids, probs, strict=True)],
                stopped=reason,
            )
            for c, conf, e, ids, probs, reason in zip(
                outcome.class_id.tolist(),
                outcome.confidence.tolist(),
                outcome.exit.tolist(),
                top_ids,
                top_probs,
                outcome.reasons(),
                strict=True,
            )
        ]
        return ClassifyResult(
            predictions=predictions,
            plan=ticket.plan,
            arrived=request.arrived,
            decode_seconds=decode_seconds,
            queue_seconds=outcome.queue_seconds,
            compute_seconds=outcome.compute_seconds,
            deadline_s=request.params.deadline_s,
            traffic=Traffic(outcome.trace, outcome.exit, np.isin(outcome.reason, SERVER_STOPS)),
        )

    # --- what /v1/model shows ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` returns."""
        m, s = self.manifest, self.settings
        cal = self.loaded.calibration
        anytime = {a.exit: a for a in cal.anytime} if cal else {}
        exits = []
        for e in m.exits:
            item: dict[str, Any] = {"exit": e.exit, "mflops": e.mflops, "params_m": e.params_m}
            if e.exit in anytime:
                item["heldout_accuracy"] = anytime[e.exit].heldout_top1
                item["test_accuracy"] = anytime[e.exit].test_top1
            exits.append(item)
        points = [
            {
                "name": p.name,
                "target_mflops": p.target_mflops,
                "expected_mflops": p.expected_mflops,
                "thresholds": p.thresholds,
                "heldout": p.heldout.model_dump(),
                "test": p.test.model_dump() if p.test else None,
                "budget_control": self.control.describe(p.name),
            }
            for p in self.resolver.points
        ]
        budget_range = self.resolver.budget_range
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
            "latency_model": self.engine.latency.describe(),
            "deadline_margin_ms": round(self.margin.current() * 1000, 3),
            "degradation": {
                "enabled_by_default": s.degrade,
                "level": self.degrader.current(),
                "queue_ms": s.degrade_queue_ms,
                "hold_ms": round(self.degrader.hold_s * 1000, 3),
                "shed_after_ms": s.degrade_shed_after_ms,
            },
            "budget_control": {
                "enabled": self.control.enabled,
                "available": self.control.available,
                "window": s.budget_control_window,
                "tolerance": s.budget_control_tolerance,
            },
            "backend": self.runner.backend,
            "device": str(self.runner.device),
            "provider": self.runner.provider,
            "limits": {
                "max_batch_size": s.max_batch_size,
                "max_wait_ms": s.max_wait_ms,
                "max_stage_wait_ms": s.max_stage_wait_ms,
                "max_queue_images": s.max_queue_images,
                "max_images_per_request": s.max_images_per_request,
                "max_body_bytes": s.max_body_bytes,
                "max_image_pixels": s.max_image_pixels,
                "request_timeout_s": s.request_timeout_s,
            },
        }


def _count(array: np.ndarray) -> int:
    return int(array.shape[0]) if array.ndim else 0
