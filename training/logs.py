"""What a run reports while it trains: ``train_log.jsonl``, TensorBoard scalars, progress.

``train_log.jsonl`` holds one JSON object per logged iteration (``"kind": "step"``: per-exit
losses, the sample weights' statistics per exit, lr, meta lr, meta loss, images/s) and per
evaluation (``"kind": "eval"``: per-exit held-out accuracy). On ``--resume``, records after the
checkpoint's iteration are dropped (they will be produced again), and TensorBoard purges them.
Progress goes to stderr: a bar on a terminal, plain lines otherwise. Only rank 0 reports.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from exitwise.fileio import atomic_write_text

LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"


def trim_log(path: Path, last_step: int) -> None:
    """Keep the records up to iteration ``last_step`` (a resumed run writes the rest again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class RunLog:
    """``train_log.jsonl`` + TensorBoard; a no-op on ranks other than 0."""

    def __init__(
        self, out: Path, *, enabled: bool, tensorboard: bool, resume_step: int | None
    ) -> None:
        self.enabled = enabled
        self.file: TextIO | None = None
        self.writer: Any = None
        if not enabled:
            return
        path = out / LOG_FILE
        if resume_step is not None:
            trim_log(path, resume_step)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self.writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=purge)

    def record(self, rec: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(_finite(rec), allow_nan=False) + "\n")
        self.file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


class Reporter:
    """Progress on stderr: a tqdm bar per epoch on a terminal, else a line every few seconds."""

    def __init__(self, mode: str, enabled: bool, epochs: int, batches: int, every_s: float):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "none"
        self.epochs, self.batches, self.every_s = epochs, batches, every_s
        self.bar: Any = None
        self.last_print = 0.0
        self.epoch = 0

    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int, start: int) -> None:
        self.epoch = epoch
        self.last_print = time.monotonic()
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.batches,
                initial=start,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, batch: int, summary: str | None) -> None:
        """``batch``: batches done in this epoch; ``summary`` is set on logged iterations."""
        if self.mode == "bar" and self.bar is not None:
            self.bar.update(batch - self.bar.n)
            if summary is not None:
                self.bar.set_postfix_str(summary, refresh=False)
        elif self.mode == "lines" and summary is not None:
            now = time.monotonic()
            if now - self.last_print >= self.every_s or batch == self.batches:
                self.last_print = now
                self.message(
                    f"epoch {self.epoch + 1}/{self.epochs} batch {batch}/{self.batches} {summary}"
                )

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
