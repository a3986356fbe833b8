"""The exit rule, the one place where "does this image stop here?" is decided.

An image stops at the first exit whose max-softmax confidence is >= that exit's threshold; the
last exit takes every image still running; an optional per-image cap (``max_exit``) forces the
image out at that exit at the latest. Calibration's simulation (all confidences known in
advance, :func:`decide_exits`) and the server (one stage at a time, :func:`stops_here`) both go
through :func:`stops_here`, so what was calibrated is what is served.

Conventions: arrays use 0-based exit *indices* (``index = exit - 1``); every user-facing number
(CLI, JSON, HTTP, metrics) is the 1-based *exit*. A threshold of +inf means "nobody exits here";
the last exit's threshold is ignored (it takes the rest). Functions accept torch tensors or
numpy arrays and return the same kind.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

Array = TypeVar("Array", Tensor, np.ndarray)


def confidence_and_prediction(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Max-softmax confidence (float64) and arg-max class of ``[N, C]`` logits.

    float64 because in float32 the confidence of every easy image rounds to exactly 1.0, which
    turns a threshold into a tie that last-bit differences between batch sizes can break.
    """
    probs = torch.softmax(logits.double(), dim=-1)
    conf, pred = probs.max(dim=-1)
    return conf, pred


def stops_here(
    confidence: Array,
    threshold: Array | float,
    index: int,
    num_exits: int,
    max_index: Array | None = None,
) -> Array:
    """Boolean mask: which of the images still running stop at exit ``index`` (0-based).

    ``confidence`` is ``[N]`` (this exit's confidences), ``threshold`` a scalar or ``[N]`` (each
    image's own threshold for this exit), ``max_index`` an optional ``[N]`` per-image cap.
    """
    if not 0 <= index < num_exits:
        raise ValueError(f"exit index {index} out of range for {num_exits} exits")
    stop = confidence >= threshold
    if index == num_exits - 1:
        stop = stop | True
    if max_index is not None:
        stop = stop | (max_index <= index)
    return stop


def decide_exits(
    confidences: Array,
    thresholds: Array,
    max_index: Array | None = None,
) -> Array:
    """Exit index (0-based) of every image, given all its confidences.

    ``confidences``: ``[N, K]``. ``thresholds``: ``[K]`` (shared) or ``[N, K]`` (per image).
    ``max_index``: optional ``[N]`` cap on the exit index. Vectorised over images; the loop runs
    over the K exits only and uses :func:`stops_here` for each.
    """
    n, k = confidences.shape
    if thresholds.shape not in ((k,), (n, k)):
        raise ValueError(f"thresholds of shape {tuple(thresholds.shape)} for {k} exits")
    exits: Any
    decided: Any
    if isinstance(confidences, Tensor):
        exits = torch.full((n,), k - 1, dtype=torch.int64, device=confidences.device)
        decided = torch.zeros(n, dtype=torch.bool, device=confidences.device)
    else:
        exits = np.full(n, k - 1, dtype=np.int64)
        decided = np.zeros(n, dtype=bool)
    for index in range(k):
        thr = thresholds[..., index]
        stop = stops_here(confidences[:, index], thr, index, k, max_index)
        new = stop & ~decided
        exits[new] = index
        decided = decided | stop
    out: Array = exits
    return out
