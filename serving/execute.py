"""One stage batch, start to finish: decode (first stage), run, decide, answer, hand on.

:class:`StageExecutor` is what the engine's worker does with a batch the scheduler gave it:

- first stage: decode the requests' encoded images and normalise all their pixels in one call;
- later stages: answer the rows whose ``deadline_ms`` the stage could no longer meet, from the
  exit they passed last (reason ``deadline``), and run the others;
- run the stage, apply the exit rule (:func:`exitwise.runtime.judge_stage`, the function
  calibration's simulation uses), and answer the rows that stop: ``confident`` (the threshold),
  ``cap`` (``max_exit`` or the last exit) or ``deadline`` (the next stage would not finish in
  time, by the latency model);
- return the survivors, with this exit's answer kept for each, for the next stage's queue.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from exitwise.errors import ExitwiseError
from exitwise.runtime import StageRunner, judge_stage, top_k_of

from .jobs import Decoder, EngineFailureError, ImageResult, Job, StopReason
from .latency import LatencyModel
from .metrics import Metrics
from .stage_queue import Chunk

log = logging.getLogger("exitwise.serving.engine")

ENTRY_WAIT_TAU_S = 0.1


class StageExecutor:
    def __init__(
        self,
        runner: StageRunner,
        exit_mflops: list[float],
        latency: LatencyModel,
        metrics: Metrics | None = None,
        decode: Decoder | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.runner = runner
        self.num_exits = runner.num_exits
        self.exit_mflops = exit_mflops
        self.latency = latency
        self.metrics = metrics
        self.decode = decode
        self.normalize = normalize
        # Exponentially weighted wait of requests before their first image's first stage (the
        # queueing delay the server degrades on; a big request's later batches do not count).
        # It also fades with time (ENTRY_WAIT_TAU_S), so a queue that is gone is soon forgotten
        # even when few requests come to update it.
        self._entry_wait = 0.0
        self._entry_wait_at = 0.0

    def entry_wait(self, now: float) -> float:
        """The recent queueing wait before the first stage, faded by the time since."""
        return self._entry_wait * math.exp(-(now - self._entry_wait_at) / ENTRY_WAIT_TAU_S)

    # --- before a stage ----------------------------------------------------------------------

    def decode_entry(self, chunks: list[Chunk]) -> list[Chunk]:
        """Decode the encoded chunks of a first-stage batch and normalise all their pixels in
        one call; a request whose image cannot be decoded fails alone (its 4xx)."""
        if all(c.encoded is None for c in chunks):
            return chunks
        assert self.decode is not None and self.normalize is not None  # checked in submit
        pixels: list[np.ndarray] = []
        ready: list[Chunk] = []
        for c in chunks:
            if c.encoded is None:
                ready.append(c)
                continue
            job = c.jobs[0]  # a first-stage chunk holds one request's images
            start = time.monotonic()
            try:
                pixels.append(self.decode(c.encoded, c.labels))
            except ExitwiseError as err:  # the client's image: a 4xx for its request alone
                job.fail(err)
                continue
            except Exception:
                log.exception("decoding %d images failed", len(c))
                job.fail(EngineFailureError("decoding failed"))
                continue
            job.decode_seconds += time.monotonic() - start
            ready.append(c)
        if pixels:
            x = self.normalize(torch.from_numpy(np.concatenate(pixels)))
            offset = 0
            for c in ready:
                if c.encoded is not None:
                    c.state, c.encoded = [x[offset : offset + len(c)]], None
                    offset += len(c)
        return ready

    def answer_late(self, index: int, chunk: Chunk, now: float) -> Chunk | None:
        """Before stage ``index`` (> 0): answer the rows it could no longer finish in time for
        their ``deadline_ms``, from the exit they passed; the rest (None: nobody left)."""
        finish = now + self.latency.estimate(index, len(chunk))
        late = np.array(
            [j.answer_by is not None and finish > j.answer_by for j in chunk.jobs], dtype=bool
        )
        if not late.any():
            return chunk
        assert chunk.last_class is not None and chunk.last_conf is not None
        rows = np.flatnonzero(late)
        top = self._tops(chunk.last_logits, late, chunk.jobs)
        for pos, i in enumerate(rows.tolist()):
            self._answer(
                chunk.jobs[i],
                int(chunk.rows[i]),
                index - 1,
                int(chunk.last_class[i]),
                float(chunk.last_conf[i]),
                top[pos] if top else (),
                "deadline",
            )
        if self.metrics is not None:
            self.metrics.stops.labels(reason="deadline").inc(len(rows))
        return chunk.keep(~late) if not late.all() else None

    # --- the stage ---------------------------------------------------------------------------

    def run(self, index: int, chunk: Chunk, next_rows: int = 0) -> Chunk | None:
        """Run stage ``index`` on ``chunk``; answer who stops; the survivors (or None).

        ``next_rows``: rows already waiting for the next stage (for the deadline forecast)."""
        start = time.monotonic()
        runner, k = self.runner, self.num_exits
        state = runner.initial_state(chunk.state[0]) if index == 0 else chunk.state
        state, logits = runner.run_stage(index, state)
        thresholds = chunk.thresholds[:, index]
        verdict = judge_stage(logits, index, k, thresholds, chunk.caps)
        stop = verdict.stop
        jobs = chunk.jobs
        done = time.monotonic()
        late = np.zeros(len(chunk), dtype=bool)
        if index + 1 < k and not stop.all() and any(j.answer_by is not None for j in jobs):
            going = int((~stop).sum())
            finish = done + self.latency.estimate(index + 1, next_rows + going)
            late = ~stop & np.array(
                [j.answer_by is not None and finish > j.answer_by for j in jobs], dtype=bool
            )
        leave = stop | late
        survivors = None
        if not leave.all():
            keep_logits = any(j.answer_by is not None and j.top_k for j in jobs)
            survivors = Chunk(
                state,
                jobs,
                chunk.rows,
                chunk.thresholds,
                chunk.caps,
                0.0,
                last_class=verdict.prediction,
                last_conf=verdict.confidence,
                last_logits=logits if keep_logits else None,
            ).keep(~leave)
        top = self._tops(logits, leave, jobs)
        seconds = time.monotonic() - start
        self.latency.observe(index, len(chunk), done - start)
        for job in {id(j): j for j in jobs}.values():
            job.compute_seconds += seconds
        waits = [start - j.enqueued for j in jobs] if index == 0 else None
        if index == 0:
            first = {id(j): j for j in jobs if not j.started}.values()
            for job in first:
                job.started = True
                current = self.entry_wait(start)
                self._entry_wait = current + 0.2 * (start - job.enqueued - current)
                self._entry_wait_at = start
        # The last exit has no threshold (it takes every image left): stopping there is "cap".
        confident = stop & (verdict.confidence >= thresholds) & (index < k - 1)
        reasons: list[StopReason] = [
            "confident" if c else ("cap" if s else "deadline")
            for c, s in zip(confident[leave].tolist(), stop[leave].tolist(), strict=True)
        ]
        if self.metrics is not None:
            self.metrics.record_stage(
                index,
                len(chunk),
                int(leave.sum()),
                self.exit_mflops[index],
                done - start,
                waits,
                reasons,
            )
        classes = verdict.prediction.tolist()
        confidences = verdict.confidence.tolist()
        for pos, i in enumerate(np.flatnonzero(leave).tolist()):
            top_i = top[pos] if top else ()
            self._answer(
                jobs[i], int(chunk.rows[i]), index, classes[i], confidences[i], top_i, reasons[pos]
            )
        return survivors

    # --- answers -----------------------------------------------------------------------------

    @staticmethod
    def _tops(
        logits: Tensor | None, rows: np.ndarray, jobs: list[Job]
    ) -> list[tuple[tuple[int, float], ...]]:
        """Top-k pairs for the rows where ``rows`` is true (each its request's k; [] if none)."""
        picked = np.flatnonzero(rows).tolist()
        k = max((jobs[i].top_k for i in picked), default=0)
        if not k or logits is None:
            return []
        ids, probs = top_k_of(logits, rows, k)
        out = []
        for pos, i in enumerate(picked):
            n = jobs[i].top_k
            out.append(tuple(zip(ids[pos, :n].tolist(), probs[pos, :n].tolist(), strict=True)))
        return out

    @staticmethod
    def _answer(
        job: Job,
        row: int,
        index: int,
        class_id: int,
        confidence: float,
        top: tuple[tuple[int, float], ...],
        reason: StopReason,
    ) -> None:
        job.answer(row, ImageResult(index, class_id, confidence, top, reason))
