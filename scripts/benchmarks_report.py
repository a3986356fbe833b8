#!/usr/bin/env python3
"""docs/BENCHMARKS.md from the files `scripts/benchmarks.sh` writes under docs/benchmarks/.

    scripts/benchmarks.sh                     # measure (writes docs/benchmarks/*, then runs this)
    python scripts/benchmarks_report.py       # only re-assemble docs/BENCHMARKS.md

Every figure here is read from those files; the targets come from the issues that set them. A
table whose files are missing is reported as not measured, never filled in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks_reading import reading

from exitwise.fileio import atomic_write_text

REPO = Path(__file__).resolve().parent.parent

# Targets set by the serving work (see docs/serving.md); the training targets come with
# `bench train --json`'s rows.
SERVING_EFFICIENCY = 0.8  # wall-clock speed-up >= 0.8 x MFLOPs ratio under load
HTTP_OVERHEAD = 0.20  # HTTP + decode share of the request time at batch 1


def _load(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.exists() else None


def _text(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _commands(bench: Path, item: str) -> str:
    text = _text(bench / f"{item}.cmd")
    if not text:
        return ""
    return "Commands (run by `scripts/benchmarks.sh " + item + "`):\n\n```\n" + text + "\n```\n"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _points(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """The operating-point rows (not the last-exit baseline) that match every key."""
    return [
        r
        for r in rows
        if r["workload"] != "last exit" and all(r.get(k) == v for k, v in match.items())
    ]


def _fmt_points(rows: list[dict[str, Any]], key: str, fmt: str = "{:.2f}") -> str:
    return ", ".join(f"{r['workload']}: {fmt.format(r[key])}" for r in rows)


def summary(bench: Path) -> list[str]:
    lines = [
        "| what | target | measured | |",
        "|---|---|---|---|",
    ]
    engine = _load(bench / "engine.json")
    http = _load(bench / "http.json")
    train = _load(bench / "train.json")
    cal = _load(bench / "calibration.json")
    if http is not None:
        conc = max(r["concurrency"] for r in http["rows"])
        loaded = _points(http["rows"], concurrency=conc)
        worst = min(r["mflops_efficiency"] for r in loaded)
        lines.append(
            f"| HTTP under load ({conc} clients): speed-up / MFLOPs ratio, per operating point "
            f"| >= {SERVING_EFFICIENCY} | {_fmt_points(loaded, 'mflops_efficiency')} "
            f"| {_verdict(worst >= SERVING_EFFICIENCY)} |"
        )
        # The share comes from the Server-Timing header, which the C client does not read.
        single = [
            r["overhead_fraction_p50"]
            for r in http["rows"]
            if r["concurrency"] == 1 and r.get("overhead_fraction_p50") is not None
        ]
        if single:
            over = max(single)
            lines.append(
                "| HTTP + decode share of the request time, 1 client, 1 image per request "
                f"(median; worst workload) | < {HTTP_OVERHEAD:.0%} | {over:.0%} "
                f"| {_verdict(over < HTTP_OVERHEAD)} |"
            )
        batched = _load(bench / "http-batched.json")
        if batched is not None:
            b_rows = _points(batched["rows"])
            b_worst = min(r["mflops_efficiency"] for r in b_rows)
            lines.append(
                f"| HTTP under load ({b_rows[0]['concurrency']} clients x "
                f"{b_rows[0]['images_per_request']} images per request): speed-up / MFLOPs ratio "
                f"| >= {SERVING_EFFICIENCY} | {_fmt_points(b_rows, 'mflops_efficiency')} "
                f"| {_verdict(b_worst >= SERVING_EFFICIENCY)} |"
            )
        with_oracle = [r for r in loaded if "oracle_efficiency" in r]
        if with_oracle:
            lines.append(
                f"| HTTP under load ({conc} clients): oracle efficiency | 1.0 is ideal "
                f"| {_fmt_points(with_oracle, 'oracle_efficiency')} | |"
            )
    else:
        lines.append("| HTTP benchmark | - | not measured | |")
    if engine is not None:
        for batch in sorted({r["batch_size"] for r in engine["rows"]}):
            pts = _points(engine["rows"], batch_size=batch)
            lines.append(
                f"| engine, batch {batch}: speed-up / MFLOPs ratio (oracle efficiency) "
                "| 1.0 is ideal | "
                + ", ".join(
                    f"{r['workload']}: {r['mflops_efficiency']:.2f} ({r['oracle_efficiency']:.2f})"
                    for r in pts
                )
                + " | |"
            )
    else:
        lines.append("| engine benchmark | - | not measured | |")
    if train is not None:
        for row in train["rows"]:
            target = row["target"]
            if target is None:
                continue
            lines.append(
                f"| training: L2W / uniform time per image, meta interval {row['interval']} "
                f"({row['how']}) | <= {target}x | {row['ratio']:.2f}x "
                f"| {_verdict(row['ratio'] <= target)} |"
            )
    else:
        lines.append("| training-step benchmark | - | not measured | |")
    if cal is not None:
        lines.append(
            f"| calibration: solve {cal['budgets']} budgets on {cal['images']:,} held-out images "
            f"| - | {cal['solve_s']:.3f} s ({cal['solve_per_budget_ms']:.1f} ms per budget) | |"
        )
    lines += serving_targets(bench)
    return lines


def serving_targets(bench: Path) -> list[str]:
    """The targets of the serving-under-load, budget-control and deadline work, as measured."""
    from benchmarks_targets import serving_rows

    return serving_rows(bench)


def machine(bench: Path) -> str:
    engine = _load(bench / "engine.json")
    cal = _load(bench / "calibration.json")
    parts = []
    if cal is not None:
        parts.append(f"{cal['machine']}; Python {cal['python']}, numpy {cal['numpy']}")
    if engine is not None:
        m = engine["machine"]
        # A subset re-measured later may have run on another machine of the same kind.
        elsewhere = cal is not None and m.get("cpu") and not m["cpu"].startswith(cal["machine"])
        where = f", on {m['cpu']}" if elsewhere else ""
        parts.append(
            f"torch {m['torch']} ({m['threads']} intra-op thread(s) in the engine run{where}), "
            f"device {m['device']}" + (f" ({m['gpu']})" if m.get("gpu") else "")
        )
    return "; ".join(parts) if parts else "unknown (no benchmark files)"


def calibration_table(cal: dict[str, Any]) -> list[str]:
    return [
        "| held-out images | test images | exits | budgets | solve all budgets | per budget "
        "| full calibration | largest (target - achieved) / target | budgets exceeded |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {cal['images']:,} | {cal['test_images']:,} | {cal['exits']} | {cal['budgets']} "
        f"| {cal['solve_s']:.3f} s | {cal['solve_per_budget_ms']:.2f} ms | {cal['full_s']:.3f} s "
        f"| {cal['max_relative_gap']:.1e} | {cal['exceeded']} |",
        "",
        f"Median of {cal['repeat']} repetitions, each with a fresh solver. Synthetic scores (the "
        "network's forward passes run once per bundle and are cached; they are not included).",
    ]


SECTIONS: list[tuple[str, str, str, str]] = [
    (
        "demo",
        "The demo from a fresh clone",
        "demo.md",
        "What a newcomer's `make demo` does on this machine: a fresh clone of the repository, its "
        "own `.venv`, the demo recipe trained, calibrated, exported and served "
        "(`scripts/demo_fresh.py`). Accuracies are on the 10,000 test images, from the bundle's "
        "calibration.",
    ),
    (
        "engine",
        "Engine: early exit without HTTP",
        "engine.md",
        "The serving engine (queue, batching, stage-by-stage run, exit rule, row removal) driven "
        "in-process at each calibrated operating point and at the last exit only, at batch 1 and "
        "batched. *Speed-up* is against the last-exit row of the same batch size; *MFLOPs ratio* "
        "is the last exit's MFLOPs over the realised mean; *MFLOPs-efficiency* is their quotient "
        "(1.0: the MFLOPs saving became the same time saving). *Oracle* is the time the network "
        "alone needs for the exits served (blocks and heads 1..k timed at the same batch size), "
        "so *oracle efficiency* shows what the engine adds on top of the network. Below the "
        "table, the engine alone at batch 1: the same engine over stages that cost nothing (its "
        "queue, scheduling, exit rule and answer, per image, on the same machine in the same "
        "run); an operating point's batch-1 oracle efficiency is at most its oracle time over "
        "that time plus the engine's. The garbage collector runs as in the server (start-up "
        "frozen, no full collection during the runs); the oracle is timed in the same run, "
        "interleaved, and a figure just over 1.0 is within its noise.",
    ),
    (
        "http",
        "HTTP: `exitwise serve` under load",
        "http.md",
        "`exitwise bench http --client wrk` against `exitwise serve` pinned to core 1 with one "
        "torch thread, `wrk` (C, one thread, closed loop) pinned to core 0, rotating over 500 test "
        "images as PNG bodies: 1 and 16 connections, each operating point against the same "
        "server forced to the last exit (`max_exit`), two rounds interleaved. What the server "
        "did (exits, MFLOPs) comes from its own /metrics. *Beyond network* is the server's time "
        "per image that is not the network (1 / images per s - the oracle's time per image for "
        "the exits served): HTTP, decoding, queues and bookkeeping, with the server's one core "
        "saturated (16 connections).",
    ),
    (
        "http-batched",
        "HTTP: 16 images per request",
        "http-batched.md",
        "The same server, 4 clients sending 16 images per request.",
    ),
    (
        "peer",
        "A peer in the same run: LitServe on the same network",
        "peer.md",
        "`exitwise bench peer`: `exitwise serve` (the last exit, then each calibrated budget) and "
        "LitServe 0.2.19 serving the same bundle's full network with its own batching (32 images "
        "or 2 ms; JSON with a base64 PNG), one server at a time on the same pinned core (core 1), "
        "the same C client (`wrk`, one thread, pinned to core 0) rotating over the same 512 test "
        "images, each server stopped with its whole process group before the next starts; two "
        "rounds alternating the servers, pooled (requests/s over both; latencies the median of "
        "the rounds). *x LitServe* and *x last exit* are at the same number of connections.",
    ),
    (
        "drift",
        "Budget control under drift",
        "drift.md",
        "`exitwise bench drift`: through the server's own data plane (no HTTP), 2,000 clean test "
        "images, 6,000 shifted ones (sensor noise, blur, dimmed, tilted, and rendered digits: "
        "another kind of image), then 2,000 clean again, at every operating point, with budget "
        "control off and on. *Realised* is the phase's mean MFLOPs per image against the point's "
        "expected cost; *after 2000* the same over the phase after its first 2,000 images; "
        "*worst 2000-window* the largest error of any 2,000 consecutive images after those "
        "(sampling noise alone puts this at 1.5-4 % for thresholds solved on the shifted images "
        "themselves); *same exit as off* compares each image's exit with control on to open "
        "loop, i.e. to calibration's simulation. ![drift](benchmarks/drift.png)",
    ),
    (
        "overload",
        "Overload: degrade before shedding",
        "overload.md",
        "`exitwise bench http --overload 1,2,4`: the server pinned to one core (see the command "
        "for its queue bound), `wrk` on the other. First the last exit's and the cheapest "
        "operating point's closed-loop capacities (16 connections), in the same invocation. Then "
        "requests for the full network (`max_exit=4`) with `deadline_ms=100` arrive open loop: "
        "one Poisson schedule at 1x, 2x and 4x the last exit's capacity, shared by enough `wrk` "
        "connections that a free one is there when an arrival is due (*asked / sent* is the "
        "rate asked and achieved), with `degrade=false` and `degrade=true`, and "
        "`deadline_policy=strict` at 4x. Latencies are the client's (from writing the request "
        "to the last byte of the answer), of the answered requests: each request carries an "
        "`X-Request-Id`, which the server echoes, so the script pairs every answer with its "
        "send and tells the 503s apart. *Goodput* counts answers within the deadline; "
        "*x cheapest* is goodput over the cheapest point's closed-loop capacity; *503s* says "
        "why the server refused them (`exitwise_refused_total`: `queue_full`, "
        "`deadline_shed` at degradation's cheapest point, `deadline_strict`); accuracy is "
        "estimated from the "
        "calibrated test accuracy of what served each answer. *Cores* is the server's CPU time "
        "over the run's (`process_cpu_seconds_total`) and its engine worker's part "
        "(`exitwise_engine_cpu_seconds_total`): on one saturated core, what the engine does not "
        "use goes to the rest of the server, its event loop (HTTP, admission, refusals) above "
        "all. *Listen drops* is the host's count of connections the kernel dropped at a "
        "listening socket during the run (`ListenDrops` in /proc/net/netstat; its accept queue "
        "full): such a client retries only after a retransmission timeout (0.2 s to seconds), a "
        "wait the server never sees and the client's latency includes. *Over 250 ms* counts the "
        "requests slower than that as the client measured them (answered, refused) and as the "
        "server did (its `exitwise_request_duration_seconds`, from the request's arrival stamp "
        "to the response sent): the client's excess is time the server could not see (the "
        "handshake, the client). The "
        "figure's right panel "
        "is the degradation level (`exitwise_degradation_level`, sampled every 0.25 s) over each "
        "run with degradation on. ![overload](benchmarks/overload.png)",
    ),
    (
        "deadlines",
        "Deadline sweep",
        "deadlines.md",
        "`exitwise bench http --deadlines 5,10,20,50 --deadline-loads 0.5,0.9`: the same server; "
        "requests for the full network (`max_exit=4`, `degrade=false`) arrive open loop "
        "(Poisson, `wrk` on core 0) at 0.5x and 0.9x the last exit's closed-loop capacity "
        "(measured first, in the same invocation), without a deadline and with `deadline_ms=D`. "
        "Latencies are the client's; stop reasons and exits come from the server's /metrics; "
        "accuracy is each exit's test accuracy weighted by the images it served.",
    ),
    (
        "heavy-engine",
        "The heavier model: engine",
        "heavy-engine.md",
        "The same engine benchmark on `configs/fmnist-rgb-bench.yaml` (msdnet-cifar100's network, "
        "5 exits, 6.8 to 58 MFLOPs, on 3-channel Fashion-MNIST), calibrated at 10, 15 and 25 "
        "MFLOPs per image.",
    ),
    (
        "heavy-http",
        "The heavier model: HTTP",
        "heavy-http.md",
        "The same model behind `exitwise serve` on one core, loaded by `wrk` on the other.",
    ),
    (
        "backends",
        "Backends: PyTorch eager against onnxruntime",
        "backends.md",
        "The same early-exit loop over the bundle's PyTorch model and over its ONNX stage graphs, "
        "side by side in one process, on held-out images.",
    ),
]


def render(bench: Path) -> str:
    out = [
        "# Benchmarks",
        "",
        "Generated by `python scripts/benchmarks_report.py` from the files that "
        "`scripts/benchmarks.sh` writes under [benchmarks/](benchmarks/); re-measure with "
        "`make demo && scripts/benchmarks.sh` (about 40 minutes on a 2-core CPU, on an otherwise "
        "idle machine; the heavier model is trained by its recipe first). The bundle is the demo "
        "model (`configs/demo.yaml`: `msdnet-fmnist`, 4 exits, L2W, calibrated at 1.8, 2.4 and 4 "
        "MFLOPs per image) unless a section says otherwise. Ratios inside a table come from "
        "workloads interleaved in one invocation; absolute figures on a shared VM move between "
        "runs, ratios much less.",
        "",
        f"**Machine.** {machine(bench)}.",
        "",
        "**GPU.** No GPU was available for these runs. On a GPU machine the same script measures "
        "CUDA (`--device auto` picks it); the CUDA code paths are covered by tests marked `cuda`.",
        "",
        "## Targets",
        "",
        *summary(bench),
        "",
        "What the figures mean, and what limits them on this CPU: "
        "[Reading the figures](#reading-the-figures) below.",
        "",
    ]
    for item, title, file, intro in SECTIONS:
        out += [f"## {title}", "", intro, ""]
        table = _text(bench / file)
        if table is None:
            out += ["Not measured (no " + file + ").", ""]
            continue
        if item == "backends":
            # The file is a whole section of its own; drop its heading level by one.
            lines = table.splitlines()
            table = "\n".join("#" + line if line.startswith("## ") else line for line in lines)
        out += [_commands(bench, item), table, ""]
    out += ["## Calibration speed", ""]
    cal = _load(bench / "calibration.json")
    out += [_commands(bench, "calibration")]
    out += calibration_table(cal) if cal is not None else ["Not measured (no calibration.json)."]
    out += ["", "## Training step: L2W-DEN against uniform", ""]
    train = _text(bench / "train.md")
    out += [_commands(bench, "train"), train if train is not None else "Not measured."]
    out += ["", *reading(bench)]
    return "\n".join(out).rstrip() + "\n"


def drift_figures(bench: Path) -> list[str]:
    """Budget control's measured figures for docs/serving.md, from drift.json."""
    from benchmarks_targets import drift_rows

    drift = _load(bench / "drift.json")
    if drift is None:
        return ["Not measured (no docs/benchmarks/drift.json)."]
    return [
        "Measured by `exitwise bench drift` on the demo bundle (written by "
        "`scripts/benchmarks_report.py` from `docs/benchmarks/drift.json`; the tables are in "
        "[BENCHMARKS.md](BENCHMARKS.md#budget-control-under-drift)):",
        "",
        "| what | target | measured | |",
        "|---|---|---|---|",
        *drift_rows(drift),
    ]


def with_block(text: str, name: str, lines: list[str]) -> str:
    """``text`` with what lies between ``<!-- name -->`` and ``<!-- /name -->`` replaced."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"error: no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    return head + start + "\n" + "\n".join(lines) + "\n" + end + rest.split(end, 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    atomic_write_text(args.out, render(args.bench))
    print(f"wrote {args.out}")
    if args.out == REPO / "docs" / "BENCHMARKS.md":  # the docs' own figures, not a trial copy
        doc = REPO / "docs" / "serving.md"
        text = doc.read_text()
        atomic_write_text(doc, with_block(text, "drift-figures", drift_figures(args.bench)))
        print(f"wrote {doc} (budget control's figures)")


if __name__ == "__main__":
    main()
