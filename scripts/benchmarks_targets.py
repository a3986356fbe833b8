"""The serving targets of docs/BENCHMARKS.md (load, budget control, deadlines), read from the
files `scripts/benchmarks.sh` writes; a target whose file is missing says so."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.exists() else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _row(what: str, target: str, measured: str, ok: bool | None) -> str:
    return f"| {what} | {target} | {measured} | {'' if ok is None else _verdict(ok)} |"


def peer_rows(peer: dict[str, Any], engine: dict[str, Any] | None) -> list[str]:
    rows = peer["rows"]
    out = []
    by = {(r["server"], r["workload"], r["connections"]): r for r in rows}
    conns = max(r["connections"] for r in rows)
    budgets = sorted(
        (r for r in rows if r["server"] == "exitwise" and r["workload"] != "last exit"
         and r["connections"] == conns),
        key=lambda r: r["mean_mflops"] or 0,
    )  # fmt: skip
    last = by.get(("exitwise", "last exit", conns))
    lit = by.get(("litserve", "full network", conns))
    if budgets and last and lit:
        cheap = budgets[0]
        out.append(_row(
            f"{conns} connections, {cheap['workload']}: requests/s over the last exit's",
            ">= 2x", f"{cheap['vs_last_exit']:.2f}x", cheap["vs_last_exit"] >= 2,
        ))  # fmt: skip
        out.append(_row(
            f"{conns} connections, {cheap['workload']}: requests/s over LitServe's (full network)",
            ">= 3x", f"{cheap['vs_litserve']:.2f}x", cheap["vs_litserve"] >= 3,
        ))  # fmt: skip
        out.append(_row(
            f"{conns} connections, last exit: requests/s over LitServe's", ">= 1.5x",
            f"{last['vs_litserve']:.2f}x", last["vs_litserve"] >= 1.5,
        ))  # fmt: skip
        mine = [r for r in rows if r["server"] == "exitwise" and r["connections"] == conns]
        worst = max(r["p99_over_p50"] for r in mine)
        out.append(_row(
            f"{conns} connections: p99 / p50, every workload", "<= 2.5",
            ", ".join(f"{r['workload']}: {r['p99_over_p50']:.1f}" for r in mine), worst <= 2.5,
        ))  # fmt: skip
        p99 = max(r["p99_ms"] for r in mine)
        out.append(_row(
            f"{conns} connections: p99, every workload, against LitServe's",
            f"< {lit['p99_ms']:.1f} ms", f"at most {p99:.1f} ms", p99 < lit["p99_ms"],
        ))  # fmt: skip
    single = by.get(("exitwise", "last exit", 1))
    if single and engine:
        base = [r for r in engine["rows"] if r["batch_size"] == 1 and r["workload"] == "last exit"]
        if base:
            limit = base[0]["ms_per_image"] + 0.5
            out.append(_row(
                "1 connection, last exit: p50 over HTTP", f"<= engine batch 1 + 0.5 ms "
                f"= {limit:.2f} ms", f"{single['p50_ms']:.2f} ms", single["p50_ms"] <= limit,
            ))  # fmt: skip
    return out


def engine_rows(engine: dict[str, Any]) -> list[str]:
    out = []
    for batch, floor in ((1, 0.85), (max(r["batch_size"] for r in engine["rows"]), 0.9)):
        pts = [r for r in engine["rows"] if r["batch_size"] == batch]
        worst = min(r["oracle_efficiency"] for r in pts)
        out.append(_row(
            f"engine without HTTP, batch {batch}: oracle efficiency, every workload",
            f">= {floor}", ", ".join(f"{r['workload']}: {r['oracle_efficiency']:.2f}" for r in pts),
            worst >= floor,
        ))  # fmt: skip
    return out


def http_rows(http: dict[str, Any], heavy: dict[str, Any] | None) -> list[str]:
    out = []
    conns = max(r["concurrency"] for r in http["rows"])
    loaded = [r for r in http["rows"] if r["concurrency"] == conns and "beyond_network_ms" in r]
    if loaded:
        worst = max(r["beyond_network_ms"] for r in loaded)
        shown = ", ".join(f"{r['workload']}: {r['beyond_network_ms']:.3f}" for r in loaded)
        out.append(_row(
            f"{conns} connections, one core: server time per image beyond the network",
            "<= 0.35 ms", shown, worst <= 0.35,
        ))  # fmt: skip
    if heavy is not None:
        hconns = max(r["concurrency"] for r in heavy["rows"])
        pts = [
            r for r in heavy["rows"] if r["concurrency"] == hconns and r["workload"] != "last exit"
        ]
        worst = min(r["mflops_efficiency"] for r in pts)
        out.append(_row(
            f"heavier model over HTTP ({hconns} connections): MFLOPs-efficiency", ">= 0.8",
            ", ".join(f"{r['workload']}: {r['mflops_efficiency']:.2f}" for r in pts), worst >= 0.8,
        ))  # fmt: skip
    return out


def drift_rows(drift: dict[str, Any]) -> list[str]:
    rows = drift["rows"]
    shifted = [r for r in rows if r["phase"] == "shifted"]
    out = []
    worst = max(abs(r["error_settled_on"]) for r in shifted)
    before = max(abs(r["error_off"]) for r in shifted)
    shown = f"worst {100 * worst:.1f} % (open loop: up to {100 * before:.0f} %)"
    out.append(_row(
        "drift: realised MFLOPs per image after 2,000 shifted images, every shift and point",
        "within 3 % of target", shown, worst <= 0.03,
    ))  # fmt: skip
    windows = [r["window_error_max_on"] for r in shifted if r["window_error_max_on"] is not None]
    if windows:
        out.append(_row(
            "drift: the same over every 2,000-image window after those", "within 3 %",
            f"worst {100 * max(windows):.1f} %", max(windows) <= 0.03,
        ))  # fmt: skip
    clean = [r for r in rows if r["phase"] == "clean"]
    same = min(r["same_exit_on"] for r in clean)
    gap = max(abs(r["mflops_on"] / r["mflops_off"] - 1) for r in clean)
    out.append(_row(
        "clean images, control on: images exiting where calibration's simulation says",
        ">= 99 %", f"{100 * same:.1f} % (worst point)", same >= 0.99,
    ))  # fmt: skip
    out.append(_row(
        "clean images, control on: realised mean against calibration's expectation", "within 1 %",
        f"{100 * gap:.2f} % (worst point)", gap <= 0.01,
    ))  # fmt: skip
    on = [r for r in drift["runs"] if r["control"]]
    control = sum(r["control_seconds"] for r in on)
    compute = sum(r["compute_seconds"] for r in on)
    if compute:
        share = control / compute
        out.append(_row(
            "budget control's cost, against the engine's compute time", "< 2 %",
            f"{100 * share:.2f} %", share < 0.02,
        ))  # fmt: skip
    return out


def load_rows(overload: dict[str, Any] | None, deadlines: dict[str, Any] | None) -> list[str]:
    out = []
    if overload is not None:
        result = overload["overload"]
        on2 = [r for r in result["rows"] if r["multiple"] == 2 and r["degrade"]]
        if on2:
            r = on2[0]
            floor = result.get("cheapest_point_accuracy")
            acc = r["accuracy_estimate"]
            out.append(_row("overload 2x, degradation on: 503s", "0", str(r["status_503"]),
                            r["status_503"] == 0))  # fmt: skip
            out.append(_row(
                "overload 2x, degradation on: p99 within the deadline",
                f"<= {result['deadline_ms']:g} ms", f"{r['p99_ms']:.1f} ms",
                r["p99_ms"] <= result["deadline_ms"],
            ))  # fmt: skip
            if floor is not None and acc is not None:
                out.append(_row(
                    "overload 2x, degradation on: accuracy (estimate)",
                    f">= the cheapest point's ({floor:.1f} %)", f"{acc:.1f} %", acc >= floor,
                ))  # fmt: skip
    if deadlines is not None:
        rows = [r for r in deadlines["deadlines"]["rows"] if r["deadline_ms"] is not None]
        worst = min(r["within_2ms_pct"] for r in rows)
        out.append(_row(
            "deadline sweep (16 clients): answered within D + 2 ms of server time",
            ">= 99 % for every D", ", ".join(
                f"{r['deadline_ms']:g} ms: {r['within_2ms_pct']:.1f} %" for r in rows
            ), worst >= 99,
        ))  # fmt: skip
        accs = [r["accuracy"] for r in rows]
        rising = all(b >= a - 0.5 for a, b in itertools.pairwise(accs))
        out.append(_row(
            "deadline sweep: accuracy rises with D (0.5 points of noise allowed)",
            "non-decreasing", ", ".join(f"{a:.1f} %" for a in accs), rising,
        ))  # fmt: skip
    return out


def serving_rows(bench: Path) -> list[str]:
    engine = _load(bench / "engine.json")
    out: list[str] = []
    peer = _load(bench / "peer.json")
    out += (
        peer_rows(peer, engine)
        if peer
        else [_row("LitServe comparison", "-", "not measured", None)]
    )
    out += engine_rows(engine) if engine else []
    http = _load(bench / "http.json")
    if http is not None:
        out += http_rows(http, _load(bench / "heavy-http.json"))
    drift = _load(bench / "drift.json")
    out += drift_rows(drift) if drift else [_row("drift benchmark", "-", "not measured", None)]
    out += load_rows(_load(bench / "overload.json"), _load(bench / "deadlines.json"))
    return out
