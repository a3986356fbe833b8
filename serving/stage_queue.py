"""The queue in front of one stage: chunks of rows that wait to run it together.

A :class:`Chunk` is a group of rows that joined the queue at the same moment: a request's images
(stage 1), or the survivors of one stage batch (later stages). It holds the rows' state tensors
(batch-first, as the stage expects them) and, per row, what the engine needs to finish it: its
request, its row in that request, its thresholds and exit cap. :meth:`StageQueue.take` pops up
to ``limit`` rows, oldest first, splitting a chunk when it must (slices of its tensors, no copy)
and concatenating the parts of several chunks into one batch (one ``torch.cat`` per state
tensor, only when there is more than one part).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exitwise.models import State, select_rows

from .scheduler import EMPTY, QueueView


@dataclass(eq=False)
class Chunk:
    state: State  # batch-first tensors, ``rows`` rows each (empty while ``encoded``)
    jobs: list[Any]  # the request of each row (the engine's job objects)
    rows: np.ndarray  # int64 [n]: each row's index within its request
    thresholds: np.ndarray  # float64 [n, K]
    caps: np.ndarray  # int64 [n]: 0-based exit cap
    since: float  # time.monotonic() it joined this queue
    # First stage only: images still encoded (PNG, JPEG, ...), decoded by the worker just
    # before they run, and a label per image for error messages.
    encoded: Sequence[bytes] | None = None
    labels: Sequence[str] | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    def split(self, n: int) -> tuple[Chunk, Chunk]:
        """The first ``n`` rows and the rest (views of the same tensors and arrays)."""
        parts = []
        for part in (slice(None, n), slice(n, None)):
            parts.append(
                Chunk(
                    [t[part] for t in self.state],
                    self.jobs[part],
                    self.rows[part],
                    self.thresholds[part],
                    self.caps[part],
                    self.since,
                    None if self.encoded is None else self.encoded[part],
                    None if self.labels is None else self.labels[part],
                )
            )
        return parts[0], parts[1]

    def keep(self, mask: np.ndarray) -> Chunk:
        """Only the rows where ``mask`` is true (the state on its own device)."""
        index = np.flatnonzero(mask)
        picked = [self.jobs[i] for i in index.tolist()]
        state = self.state
        if state:
            # An index, not the mask: torch's boolean indexing costs several times more.
            state = select_rows(state, torch.from_numpy(index).to(state[0].device))
        encoded = labels = None
        if self.encoded is not None:
            encoded = [self.encoded[i] for i in index.tolist()]
        if self.labels is not None:
            labels = [self.labels[i] for i in index.tolist()]
        return Chunk(
            state,
            picked,
            self.rows[index],
            self.thresholds[index],
            self.caps[index],
            self.since,
            encoded,
            labels,
        )


def concat(chunks: Sequence[Chunk]) -> Chunk:
    """One chunk of all rows, in order (no copy for a single chunk); all must be decoded."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    return Chunk(
        [torch.cat([c.state[i] for c in chunks]) for i in range(len(first.state))],
        [j for c in chunks for j in c.jobs],
        np.concatenate([c.rows for c in chunks]),
        np.concatenate([c.thresholds for c in chunks]),
        np.concatenate([c.caps for c in chunks]),
        min(c.since for c in chunks),
    )


class StageQueue:
    """Chunks waiting for one stage, oldest first (not thread-safe: the engine's lock guards)."""

    def __init__(self) -> None:
        self._chunks: deque[Chunk] = deque()
        self.rows = 0

    def view(self) -> QueueView:
        if not self._chunks:
            return EMPTY
        return QueueView(self.rows, self._chunks[0].since)

    @property
    def oldest(self) -> float:
        return self._chunks[0].since if self._chunks else math.inf

    def push(self, chunk: Chunk) -> None:
        if len(chunk):
            self._chunks.append(chunk)
            self.rows += len(chunk)

    def take(self, limit: int) -> list[Chunk]:
        """Up to ``limit`` rows, oldest first, as the chunks (or chunk heads) they came in."""
        out: list[Chunk] = []
        room = limit
        while self._chunks and room > 0:
            chunk = self._chunks.popleft()
            if len(chunk) > room:
                chunk, rest = chunk.split(room)
                self._chunks.appendleft(rest)
            out.append(chunk)
            room -= len(chunk)
            self.rows -= len(chunk)
        return out

    def drop(self, gone: Callable[[Any], bool]) -> int:
        """Remove the rows whose request ``gone(job)`` says is over; returns how many."""
        removed = 0
        kept: deque[Chunk] = deque()
        for chunk in self._chunks:
            mask = np.array([not gone(j) for j in chunk.jobs], dtype=bool)
            if mask.all():
                kept.append(chunk)
                continue
            removed += int((~mask).sum())
            if mask.any():
                kept.append(chunk.keep(mask))
        self._chunks = kept
        self.rows -= removed
        return removed
