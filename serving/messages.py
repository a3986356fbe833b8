"""What the data plane takes and gives, whatever the protocol: a decoded request, and the
predictions with where the request's time went (see :mod:`serving.service`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .budget.resolve import ExitPlan
from .budget.table import Traffic
from .jobs import StopReason
from .params import RequestParams


@dataclass(frozen=True)
class ClassifyRequest:
    """One request, decoded from its wire format: either encoded images or a ready tensor."""

    arrived: float  # time.monotonic() when the server first saw the request
    params: RequestParams
    encoded: Sequence[bytes] = ()  # PNG, JPEG, ... (decoded and preprocessed here)
    tensor: np.ndarray | None = None  # or an already normalised FP32 [N, C, H, W] batch
    labels: Sequence[str] | None = None  # per image, for error messages (e.g. file names)
    gone: Callable[[], Coroutine[Any, Any, Any]] | None = None  # ends when the client leaves
    left: Callable[[], bool] = lambda: False  # whether the client has left by now


@dataclass(frozen=True)
class Prediction:
    class_id: int
    class_name: str
    confidence: float
    exit: int  # 1-based
    mflops: float  # cumulative cost of that exit
    top: list[tuple[int, str, float]]  # (class id, class name, probability), best first
    stopped: StopReason = "confident"  # confident, cap, deadline or overload


@dataclass(frozen=True)
class ClassifyResult:
    predictions: list[Prediction]
    plan: ExitPlan
    arrived: float
    decode_seconds: float
    queue_seconds: float
    compute_seconds: float
    deadline_s: float | None = None  # deadline_ms, when the request had one
    traffic: Traffic | None = None  # what the engine recorded of the images (budget control)

    @property
    def mean_mflops(self) -> float:
        return sum(p.mflops for p in self.predictions) / len(self.predictions)

    def deadline_met(self) -> bool | None:
        """Whether the answer is ready within ``deadline_ms`` of arrival (None: no deadline)."""
        if self.deadline_s is None:
            return None
        return time.monotonic() - self.arrived <= self.deadline_s

    def server_timing(self) -> str:
        """A ``Server-Timing`` header value (milliseconds): where the request's time went.

        ``app`` is the whole time since the server first saw the request, ``compute`` the batch
        (or batches) its images ran in, ``queue`` the rest of its time in the engine."""
        parts = (
            ("app", time.monotonic() - self.arrived),
            ("decode", self.decode_seconds),
            ("queue", self.queue_seconds),
            ("compute", self.compute_seconds),
        )
        return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in parts)
