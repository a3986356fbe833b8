"""Images through the network stage by stage, really stopping the ones that exit.

After each stage the exit rule (:func:`exitwise.policy.stops_here`, the same function
calibration's simulation uses) decides, with each image's own thresholds and cap, which rows
stop (:func:`judge_stage`); those rows are dropped from the state
(:func:`exitwise.models.select_rows`) before the next stage runs, so later stages do less work.
Images with different budgets share a batch. :func:`run_early_exit` is that loop for one batch;
the server's engine applies :func:`judge_stage` the same way to stage batches it assembles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..models import select_rows
from ..policy import confidence_and_prediction, stops_here
from .protocol import StageRunner


@dataclass(frozen=True)
class StageVerdict:
    """The exit rule's verdict on the rows that ran one stage (CPU numpy, one entry per row)."""

    stop: np.ndarray  # bool [n]: leaves at this exit
    confidence: np.ndarray  # float64 [n]: max softmax at this exit
    prediction: np.ndarray  # int64 [n]: arg-max class at this exit


def judge_stage(
    logits: Tensor,
    index: int,
    num_exits: int,
    thresholds: np.ndarray,
    max_index: np.ndarray,
) -> StageVerdict:
    """Apply the exit rule to exit ``index``'s logits ``[n, C]``.

    ``thresholds``: float64 ``[n]`` (each row's threshold at this exit); ``max_index``: int64
    ``[n]`` 0-based caps. The confidences cross to the host once per stage: the bookkeeping (a
    handful of numbers per row) runs in numpy, which costs microseconds where small device ops
    cost tens of them.
    """
    conf_t, pred_t = confidence_and_prediction(logits)
    conf, pred = conf_t.cpu().numpy(), pred_t.cpu().numpy()
    stop = stops_here(conf, thresholds, index, num_exits, max_index)
    return StageVerdict(stop=stop, confidence=conf, prediction=pred)


def top_k_of(logits: Tensor, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes of the rows where the mask ``rows`` is true: ids int64 and
    probabilities float64 ``[rows.sum(), min(k, C)]``, best first (float64 softmax, as the
    confidence)."""
    index = torch.from_numpy(np.flatnonzero(rows)).to(logits.device)
    probs = torch.softmax(logits.index_select(0, index).double(), dim=-1)
    values, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return ids.cpu().numpy(), values.cpu().numpy()


@dataclass(frozen=True)
class BatchOutcome:
    """Per row of the batch (CPU numpy), plus how many rows entered each stage that ran."""

    exit_index: np.ndarray  # int64 [B], 0-based
    class_id: np.ndarray  # int64 [B]
    confidence: np.ndarray  # float64 [B]
    top_ids: np.ndarray  # int64 [B, top_k]
    top_probs: np.ndarray  # float64 [B, top_k]
    stage_rows: list[int]


@torch.inference_mode()
def run_early_exit(
    runner: StageRunner,
    images: Tensor,
    thresholds: np.ndarray,
    max_index: np.ndarray,
    top_k: int = 0,
) -> BatchOutcome:
    """Run ``images`` ``[B, C, H, W]`` (normalised) until every row has exited.

    ``thresholds``: float64 ``[B, K]`` (each row's own); ``max_index``: int64 ``[B]`` 0-based caps.
    ``top_k``: how many (class, probability) pairs to keep per row (0 for none).
    """
    batch = images.shape[0]
    k_total = runner.num_exits
    if thresholds.shape != (batch, k_total) or max_index.shape != (batch,):
        raise ValueError("one threshold row and one cap per image are required")
    device = runner.device

    exit_index = np.full(batch, -1, dtype=np.int64)
    class_id = np.zeros(batch, dtype=np.int64)
    confidence = np.zeros(batch, dtype=np.float64)
    top_ids = np.zeros((batch, top_k), dtype=np.int64)
    top_probs = np.zeros((batch, top_k), dtype=np.float64)

    alive = np.arange(batch)  # batch positions of the rows still running
    state = runner.initial_state(images)
    stage_rows: list[int] = []
    for index in range(k_total):
        stage_rows.append(len(alive))
        state, logits = runner.run_stage(index, state)
        verdict = judge_stage(logits, index, k_total, thresholds[alive, index], max_index[alive])
        stop = verdict.stop
        n_stop = int(stop.sum())
        if n_stop:
            rows = alive[stop]
            exit_index[rows] = index
            class_id[rows] = verdict.prediction[stop]
            confidence[rows] = verdict.confidence[stop]
            if top_k:
                ids, probs = top_k_of(logits, stop, top_k)
                top_ids[rows, : ids.shape[1]] = ids
                top_probs[rows, : probs.shape[1]] = probs
        if n_stop == len(alive):
            break
        if n_stop:
            # An index, not a mask: torch's boolean indexing costs several times more.
            keep = np.flatnonzero(~stop)
            state = select_rows(state, torch.from_numpy(keep).to(device))
            alive = alive[keep]

    return BatchOutcome(
        exit_index=exit_index,
        class_id=class_id,
        confidence=confidence,
        top_ids=top_ids,
        top_probs=top_probs,
        stage_rows=stage_rows,
    )
