"""One batch through the network, stage by stage, really stopping the images that exit.

After each stage the exit rule (:func:`exitwise.policy.stops_here`, the same function
calibration's simulation uses) decides, with each image's own thresholds and cap, which rows
stop; those rows are dropped from the state (:func:`exitwise.models.select_rows`) before the
next stage runs, so later stages do less work. Images with different budgets share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from exitwise.models import select_rows
from exitwise.policy import confidence_and_prediction, stops_here
from exitwise.runtime import StageRunner


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

    The network runs on the runner's device; the bookkeeping (a handful of numbers per row) runs
    in numpy on the host, which costs microseconds where small device ops cost tens of them.
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
        conf_t, pred_t = confidence_and_prediction(logits)
        conf, pred = conf_t.cpu().numpy(), pred_t.cpu().numpy()  # the host sync of this stage
        stop = stops_here(conf, thresholds[alive, index], index, k_total, max_index[alive])
        n_stop = int(stop.sum())
        if n_stop:
            rows = alive[stop]
            exit_index[rows] = index
            class_id[rows] = pred[stop]
            confidence[rows] = conf[stop]
            if top_k:
                mask = torch.from_numpy(stop).to(device)
                probs = torch.softmax(logits[mask].double(), dim=-1)
                values, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
                top_probs[rows, : values.shape[1]] = values.cpu().numpy()
                top_ids[rows, : ids.shape[1]] = ids.cpu().numpy()
        if n_stop == len(alive):
            break
        if n_stop:
            keep = ~stop
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
