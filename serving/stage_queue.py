"""The queue in front of one stage: chunks of rows that wait to run it together.

A :class:`Chunk` is a group of rows that joined the queue at the same moment: a request's images
(stage 1), or the survivors of one stage batch (later stages). It holds the rows' state tensors
(batch-first, as the stage expects them) and, per row, what the engine needs to finish it: its
request, its row in that request, its thresholds and exit cap, and, once it has passed an exit,
that exit's answer (so a row whose ``deadline_ms`` comes can be answered from it without running
further). :meth:`StageQueue.take` pops up to ``limit`` rows, oldest first, splitting a chunk when
it must (slices of its tensors, no copy); :func:`concat` joins the parts of several chunks into
one batch (one ``torch.cat`` per tensor, only when there is more than one part).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from exitwise.models import State, select_rows

from .scheduler import EMPTY, QueueView


@dataclass(eq=False)
class Chunk:
    state: State  # batch-first tensors, ``rows`` rows each (empty while ``encoded``)
    jobs: list[Any]  # the request of each row (serving.jobs.Job)
    rows: np.ndarray  # int64 [n]: each row's index within its request
    thresholds: np.ndarray  # float64 [n, K]
    caps: np.ndarray  # int64 [n]: 0-based exit cap
    since: float  # time.monotonic() it joined this queue
    # First stage only: images still encoded (PNG, JPEG, ...), decoded by the worker just
    # before they run, and a label per image for error messages.
    encoded: Sequence[bytes] | None = None
    labels: Sequence[str] | None = None
    # Later stages: the answer of the exit each row passed last (0-based exit, class,
    # confidence) and, when some row may need its top-k, that exit's logits.
    last_class: np.ndarray | None = None
    last_conf: np.ndarray | None = None
    last_logits: Tensor | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    @functools.cached_property
    def answer_by(self) -> float:
        """The earliest ``deadline_ms`` among the rows (math.inf: none has one); the rows of a
        chunk never change, so it is worked out once."""
        return min((j.answer_by for j in self.jobs if j.answer_by is not None), default=math.inf)

    def _part(self, index: slice | np.ndarray) -> Chunk:
        """The rows picked by ``index``: a slice (views) or an int64 array of positions."""
        state, logits = self.state, self.last_logits
        if isinstance(index, slice):
            state = [t[index] for t in state]
            logits = None if logits is None else logits[index]
        else:
            # An index, not a mask: torch's boolean indexing costs several times more.
            if state:
                state = select_rows(state, torch.from_numpy(index).to(state[0].device))
            if logits is not None:
                logits = logits.index_select(0, torch.from_numpy(index).to(logits.device))
        return Chunk(
            state,
            _pick(self.jobs, index),
            self.rows[index],
            self.thresholds[index],
            self.caps[index],
            self.since,
            None if self.encoded is None else _pick(self.encoded, index),
            None if self.labels is None else _pick(self.labels, index),
            None if self.last_class is None else self.last_class[index],
            None if self.last_conf is None else self.last_conf[index],
            logits,
        )

    def split(self, n: int) -> tuple[Chunk, Chunk]:
        """The first ``n`` rows and the rest (views of the same tensors and arrays)."""
        return self._part(slice(None, n)), self._part(slice(n, None))

    def keep(self, mask: np.ndarray) -> Chunk:
        """Only the rows where ``mask`` is true (the state on its own device)."""
        return self._part(np.flatnonzero(mask))


def _pick(items: Sequence[Any], index: slice | np.ndarray) -> list[Any]:
    if isinstance(index, slice):
        return list(items[index])
    return [items[i] for i in index.tolist()]


def concat(chunks: Sequence[Chunk]) -> Chunk:
    """One chunk of all rows, in order (no copy for a single chunk); all must be decoded."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]

    def arrays(name: str) -> np.ndarray | None:
        parts = [getattr(c, name) for c in chunks]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    logits = [c.last_logits for c in chunks]
    return Chunk(
        [torch.cat([c.state[i] for c in chunks]) for i in range(len(first.state))],
        [j for c in chunks for j in c.jobs],
        np.concatenate([c.rows for c in chunks]),
        np.concatenate([c.thresholds for c in chunks]),
        np.concatenate([c.caps for c in chunks]),
        min(c.since for c in chunks),
        last_class=arrays("last_class"),
        last_conf=arrays("last_conf"),
        last_logits=None if any(t is None for t in logits) else torch.cat(logits),  # type: ignore[arg-type]
    )


class StageQueue:
    """Chunks waiting for one stage, oldest first (not thread-safe: the engine's lock guards)."""

    def __init__(self) -> None:
        self._chunks: deque[Chunk] = deque()
        self.rows = 0

    def view(self, stage_seconds: float = 0.0) -> QueueView:
        """What the scheduler sees; ``stage_seconds``: how long the stage would take now (a
        row with a ``deadline_ms`` is due that long before it)."""
        if not self._chunks:
            return EMPTY
        due = self.answer_by() - stage_seconds
        return QueueView(self.rows, self._chunks[0].since, due)

    @property
    def oldest(self) -> float:
        return self._chunks[0].since if self._chunks else math.inf

    def answer_by(self) -> float:
        """The earliest ``deadline_ms`` among the waiting rows (math.inf: none)."""
        return min((c.answer_by for c in self._chunks), default=math.inf)

    def oldest_unstarted(self) -> float:
        """When the oldest chunk of a request none of whose images has started joined."""
        return next((c.since for c in self._chunks if not c.jobs[0].started), math.inf)

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
