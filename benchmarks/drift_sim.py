"""``exitwise bench drift --simulate``: budget control replayed over many streams.

The network runs once over the bundle's held-out split, the test split, and the test split
under every shift, and keeps every exit's confidence. A stream is then a sequence of those
images (clean traffic: held-out images, drawn with replacement; a shift: the shifted test
images; the sequence ends on the whole clean test split, each image once): each
request of 8 is served with the thresholds the controller gives at admission (the core exit
rule on the recorded confidences: exactly the exits the server would give), and observed by the
controller a few requests later, as answers come back under load. Each scenario runs for many
seeds (image order, and where a shift starts), so medians and 90th percentiles can be read.

Two figures per run, both against the operating point's target E:

- the *served cost*: what the thresholds in force cost on the traffic of the moment (their
  mean over that traffic's whole image set: no sampling noise), averaged over the images of a
  phase from a given point on. This is the controller's own error.
- the *realised cost*: the mean MFLOPs of the images actually served over the same span.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exitwise.bundle import Calibration, OperatingPoint
from exitwise.policy import confidence_and_prediction, decide_exits
from exitwise.runtime import StageRunner
from serving.budget.controller import BudgetController, ControlSettings
from serving.budget.table import ControlTable, Traffic

REQUEST = 8  # images per request
IN_FLIGHT = 4  # requests admitted before the first one is observed


@torch.inference_mode()
def confidences(runner: StageRunner, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """float64 ``[N, K]``: every exit's max-softmax confidence of normalised images ``x``."""
    out = []
    for i in range(0, len(x), batch):
        state = runner.initial_state(x[i : i + batch])
        row = []
        for k in range(runner.num_exits):
            state, logits = runner.run_stage(k, state)
            row.append(confidence_and_prediction(logits)[0].cpu().numpy())
        out.append(np.stack(row, axis=1))
    return np.concatenate(out)


@dataclass
class Stream:
    """One simulated stream: per image its cost, and the served cost of the thresholds then."""

    costs: np.ndarray
    served: np.ndarray
    phases: list[tuple[str, int]]  # (traffic name, images)
    moves: int
    observe_seconds: float

    def span(self, phase: int, start: int = 0) -> slice:
        first = sum(n for _, n in self.phases[:phase])
        return slice(first + start, first + self.phases[phase][1])


class Simulator:
    """Replays recorded confidences through one operating point's controller."""

    def __init__(
        self,
        calibration: Calibration,
        traffic: dict[str, np.ndarray],
        settings: ControlSettings | None = None,
    ) -> None:
        self.calibration = calibration
        self.costs = np.asarray(calibration.exit_mflops, dtype=np.float64)
        rows = calibration.control
        self.table = ControlTable([r.mflops for r in rows], [r.threshold_array() for r in rows])
        self.traffic = traffic
        self.settings = settings or ControlSettings()
        self._cost_of: dict[tuple[str, bytes], float] = {}

    def cost_of(self, name: str, thresholds: np.ndarray) -> float:
        """What ``thresholds`` cost on the whole image set ``name``.

        Cached by the thresholds' own bytes: a controller's row number would not do, since
        every point's controller starts at the same "calibrated" row with other thresholds."""
        k = (name, np.ascontiguousarray(thresholds, dtype=np.float64).tobytes())
        if k not in self._cost_of:
            exits = decide_exits(self.traffic[name], thresholds)
            self._cost_of[k] = float(self.costs[exits].mean())
        return self._cost_of[k]

    def run(self, point: OperatingPoint, phases: Sequence[tuple[str, int]], seed: int) -> Stream:
        rng = np.random.default_rng(seed)
        ctl = BudgetController(point, list(self.costs), self.table, self.settings)
        total = sum(n for _, n in phases)
        costs, served = np.empty(total), np.empty(total)
        pending: list[tuple[Traffic, int]] = []
        at, moves, observing = 0, 0, 0.0
        k = len(self.costs)
        for name, n in phases:
            conf = self.traffic[name]
            order = rng.permutation(len(conf)) if n == len(conf) else rng.integers(0, len(conf), n)
            for i in range(0, n, REQUEST):
                c = conf[order[i : i + REQUEST]]
                thresholds = ctl.thresholds_of(ctl.next_row())
                exits = decide_exits(c, thresholds)
                m = len(exits)
                costs[at : at + m] = self.costs[exits]
                served[at : at + m] = self.cost_of(name, thresholds)
                seen = np.arange(k)[None, :] <= exits[:, None]
                trace = Traffic(np.where(seen, c, np.nan), exits, np.zeros(m, bool))
                pending.append((trace, ctl.epoch))
                if len(pending) > IN_FLIGHT:
                    start = time.perf_counter()
                    move = ctl.observe(*pending.pop(0))
                    observing += time.perf_counter() - start
                    moves += move is not None
                at += m
        return Stream(costs, served, list(phases), moves, observing)


def _band(open_loop: float) -> tuple[str, int] | None:
    """The target band of a shift of ``open_loop`` (relative cost change): its name and the
    shifted images after which the served cost must be within 3 %."""
    if open_loop >= 0.25:
        return "+25 % or more", 1000
    if open_loop >= 0.10:
        return "+10 % to +25 %", 2000
    return None


def simulate(
    sim: Simulator,
    points: Sequence[OperatingPoint],
    shifts: Sequence[str],
    sequence: Sequence[str],
    seeds: int,
    clean_images: int = 100_000,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Single shifts (clean, the shift, clean again), the sequence, and long clean streams,
    for every point and seed."""
    rows: list[dict[str, Any]] = []
    for point in points:
        target = point.expected_mflops
        for shift in shifts:
            open_loop = sim.cost_of(shift, point.threshold_array()) / target - 1
            band = _band(open_loop)
            settle = band[1] if band else 2000
            served, realised, back, moves = [], [], [], []
            for seed in range(seeds):
                rng = np.random.default_rng(10_000 + seed)
                lead = int(rng.integers(1000, 3000))
                phases = [("heldout", lead), (shift, 6000), ("heldout", 4000)]
                s = sim.run(point, phases, seed)
                served.append(s.served[s.span(1, settle)].mean() / target - 1)
                realised.append(s.costs[s.span(1, settle)].mean() / target - 1)
                back.append(s.served[s.span(2)][2000] / target - 1)
                moves.append(s.moves)
            errors = (served, realised, back)
            rows.append(_row(point.name, shift, open_loop, band, settle, errors, moves))
            say(f"simulated {point.name} {shift}: open loop {100 * open_loop:+.1f} %")
    sequences = [_sequence(sim, p, sequence, seeds) for p in points]
    clean = []
    for point in points:
        stream = [("heldout", clean_images)]
        moves = [sim.run(point, stream, seed).moves for seed in range(seeds)]
        clean.append({"point": point.name, "images": clean_images, "moves": moves})
        say(f"simulated {point.name} on {clean_images} clean images: {sum(moves)} moves")
    return {"seeds": seeds, "rows": rows, "sequence": sequences, "clean": clean}


def _row(
    point: str,
    shift: str,
    open_loop: float,
    band: tuple[str, int] | None,
    settle: int,
    errors: tuple[list[float], list[float], list[float]],
    moves: list[int],
) -> dict[str, Any]:
    a, r, b = (np.abs(e) for e in errors)
    return {
        "point": point,
        "shift": shift,
        "open_loop": open_loop,
        "band": band[0] if band else None,
        "settle": settle,
        "served_median": float(np.median(a)),
        "served_p90": float(np.percentile(a, 90)),
        "realised_p90": float(np.percentile(r, 90)),
        "back_median": float(np.median(b)),
        "back_p90": float(np.percentile(b, 90)),
        "moves_median": float(np.median(moves)),
    }


def _sequence(
    sim: Simulator, point: OperatingPoint, names: Sequence[str], seeds: int
) -> dict[str, Any]:
    """Clean (a random length), each shift in turn (6,000 images), then the whole clean test
    split: per shift the served cost after 1,000 and 2,000 images, and the clean split's
    realised cost against calibration's expectation on it."""
    target = point.expected_mflops
    test = len(sim.traffic["test"])
    home = sim.cost_of("test", point.threshold_array())
    per: dict[str, list[list[float]]] = {n: [[], []] for n in names}
    split, back = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(20_000 + seed)
        phases = [("heldout", int(rng.integers(1000, 3000)))] + [(n, 6000) for n in names]
        s = sim.run(point, [*phases, ("test", test)], seed)
        for i, n in enumerate(names, start=1):
            for j, settle in enumerate((1000, 2000)):
                per[n][j].append(abs(s.served[s.span(i, settle)].mean() / target - 1))
        last = len(phases)
        split.append(s.costs[s.span(last)].mean() / home - 1)
        clean = s.served[s.span(last)]
        back.append(abs(clean[min(2000, len(clean) - 1)] / home - 1))
    return {
        "point": point.name,
        "shifts": [
            {
                "shift": n,
                "served_p90_after_1000": float(np.percentile(per[n][0], 90)),
                "served_p90_after_2000": float(np.percentile(per[n][1], 90)),
            }
            for n in names
        ],
        "clean_split_median": float(np.median(split)),
        "clean_split_p90": float(np.percentile(np.abs(split), 90)),
        "back_p90": float(np.percentile(back, 90)),
    }


def markdown(result: dict[str, Any]) -> str:
    """The simulation's tables: single shifts by band, the sequence, clean streams."""
    from .tables import markdown_table

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    seeds = result["seeds"]
    header = [
        "point", "shift", "open loop", "band",
        f"served cost error after (p50 / p90, {seeds} seeds)", "realised p90",
        "back home: error at 2,000 clean (p50 / p90)", "moves (median)",
    ]  # fmt: skip
    cells = [
        [
            r["point"],
            r["shift"],
            f"{100 * r['open_loop']:+.1f}%",
            r["band"] or "-",
            f"{r['settle']}: {pct(r['served_median'])} / {pct(r['served_p90'])}",
            pct(r["realised_p90"]),
            f"{pct(r['back_median'])} / {pct(r['back_p90'])}",
            f"{r['moves_median']:g}",
        ]
        for r in result["rows"]
    ]
    out = [markdown_table(header, cells, "llrlrrrr"), ""]
    header = ["point", "shift", "served p90 after 1,000", "served p90 after 2,000"]
    cells = [
        [s["point"], x["shift"], pct(x["served_p90_after_1000"]), pct(x["served_p90_after_2000"])]
        for s in result["sequence"]
        for x in s["shifts"]
    ]
    out += [markdown_table(header, cells, "llrr"), ""]
    header = ["point", "clean test split after the sequence: realised vs calibration (p50)",
              "|error| p90", "error at 2,000 clean (p90)"]  # fmt: skip
    cells = [
        [
            s["point"],
            f"{100 * s['clean_split_median']:+.2f}%",
            pct(s["clean_split_p90"]),
            pct(s["back_p90"]),
        ]
        for s in result["sequence"]
    ]
    out += [markdown_table(header, cells, "lrrr"), ""]
    header = ["point", "clean images per stream", "streams", "streams with a move"]
    cells = [
        [c["point"], f"{c['images']:,}", len(c["moves"]), sum(m > 0 for m in c["moves"])]
        for c in result["clean"]
    ]
    out.append(markdown_table(header, cells, "lrrr"))
    return "\n".join(out)
