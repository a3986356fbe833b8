"""What the benchmark files under docs/benchmarks/ say: the reading of docs/BENCHMARKS.md.

    from benchmarks_reading import reading      # with scripts/ on sys.path
    lines = reading(Path("docs/benchmarks"))    # markdown lines; [] when no file is there

Each section says what one benchmark measured and what its figures mean, with every figure read
from its file (engine.json, http.json, http-batched.json, peer.json, heavy-engine.json,
heavy-http.json, backends.md, calibration.json, train.json), and names the file. A benchmark
whose file is missing has no section; nothing is filled in from elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]

LAST_EXIT = "last exit"


def _load(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _span(values: Iterable[float], fmt: str = "{:.2f}", unit: str = "") -> str:
    """``a`` or ``a-b`` (smallest to largest), formatted."""
    ordered = sorted(values)
    if not ordered:
        return "-"
    lo, hi = fmt.format(ordered[0]), fmt.format(ordered[-1])
    return (lo if lo == hi else f"{lo}-{hi}") + unit


def _pct(share: float) -> str:
    return f"{100 * share:.1f} %"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _points(rows: Sequence[Row], **match: Any) -> list[Row]:
    """The operating-point rows (not the last-exit baseline) that match every key."""
    return [
        r
        for r in rows
        if r.get("workload") != LAST_EXIT and all(r.get(k) == v for k, v in match.items())
    ]


def _last(rows: Sequence[Row], **match: Any) -> Row | None:
    for r in rows:
        if r.get("workload") == LAST_EXIT and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _name(row: Row) -> str:
    """A workload's short name: ``budget-3.00 (3 MFLOPs)`` -> ``budget-3.00``."""
    return str(row["workload"]).split(" (")[0]


def _budget(row: Row) -> float | None:
    value = row.get("params", {}).get("budget_mflops")
    return None if value is None else float(value)


def _machine(bench: Path) -> str | None:
    for file in ("engine.json", "peer.json", "heavy-engine.json"):
        data = _load(bench / file)
        if data is not None and data.get("machine", {}).get("cpu"):
            m = data["machine"]
            device = m.get("gpu") or m.get("device", "cpu")
            return f"{m['cpu']}, device {device} ({file})"
    cal = _load(bench / "calibration.json")
    if cal is not None and cal.get("machine"):
        return f"{cal['machine']} (calibration.json)"
    return None


# --- the sections ---------------------------------------------------------------------------


def engine_section(engine: Row) -> list[str]:
    rows = engine["rows"]
    batches = sorted({r["batch_size"] for r in rows})
    costs = engine["bundle"]["exit_mflops"]
    out = [
        "### The engine without HTTP (engine.json)",
        "",
        f"`exitwise bench engine` ran the engine in-process on `{engine['bundle']['name']}` "
        f"({len(costs)} exits, {costs[0]:.2f} to {costs[-1]:.2f} MFLOPs), at batch "
        + " and ".join(str(b) for b in batches)
        + ". *MFLOPs-efficiency* is a budget's speed-up over the last exit divided by its MFLOPs "
        "ratio (1.0: the MFLOPs saved became the same share of time saved); *oracle efficiency* "
        "is the time the network alone needs for the exits served over the measured time (1.0: "
        "the engine adds nothing).",
        "",
    ]
    for batch in batches:
        pts = _points(rows, batch_size=batch)
        every = [r for r in rows if r["batch_size"] == batch]
        if not pts:
            continue
        out.append(
            f"- Batch {batch}: MFLOPs-efficiency "
            + ", ".join(f"{_name(r)} {r['mflops_efficiency']:.2f}" for r in pts)
            + f"; oracle efficiency {_span(r['oracle_efficiency'] for r in every)} over every "
            "workload, the last exit included."
        )
    big = batches[-1]
    batched = [r for r in rows if r["batch_size"] == big]
    if big > 1 and batched:
        extra = [r["ms_per_image"] - r["oracle_ms_per_image"] for r in batched]
        out.append(
            f"- What the engine adds to the network at batch {big}: "
            f"{_span(extra, '{:.2f}', ' ms')} per image (measured minus oracle time per image) "
            "across the workloads: per-row and per-call work around the stages (the exit rule, "
            "confidences, rows moved between stage queues, answers), not the network."
        )
    oracle = engine.get("oracle_seconds_per_image", {})
    shares = [
        (b, s[0] / s[-1]) for b, s in sorted(oracle.items(), key=lambda i: int(i[0])) if s and s[-1]
    ]
    if shares:
        flops = costs[0] / costs[-1]
        line = (
            f"- Exit 1 is {_pct(flops)} of the network's MFLOPs and "
            + ", ".join(f"{_pct(share)} of its time at batch {b}" for b, share in shares)
            + " (the oracle's times)"
        )
        if all(share > flops for _, share in shares):
            line += (
                ": the first stage, which every image runs, costs more time than its MFLOPs "
                "say, so the cheapest budget, whose images mostly leave there, is the furthest "
                "from its MFLOPs ratio"
            )
        out.append(line + ".")
    return [*out, ""]


def http_section(http: Row, engine: Row | None) -> list[str]:
    rows = http["rows"]
    concs = sorted({r["concurrency"] for r in rows})
    top = concs[-1]
    client = http.get("client", "python")
    out = [
        "### HTTP under load (http.json)",
        "",
        f"`exitwise bench http --client {client}` against `exitwise serve` of "
        f"`{http.get('model', '?')}` on {http.get('device', '?')}, each budget against the same "
        "server forced to the last exit, at " + " and ".join(str(c) for c in concs) + " "
        "connections. *Beyond network* is the server's time per image that is not the network "
        "(1 / images per second, less the oracle's time for the exits served): HTTP, decoding, "
        "queues and bookkeeping.",
        "",
    ]
    last, pts = _last(rows, concurrency=top), _points(rows, concurrency=top)
    if last is not None and pts:
        out.append(
            f"- {top} connections: the last exit serves {last['images_per_s']:.1f} images/s; "
            + ", ".join(
                f"{_name(r)} {r['images_per_s']:.1f} ({r['speedup']:.2f}x for an MFLOPs ratio of "
                f"{r['mflops_ratio']:.2f})"
                for r in pts
            )
            + "."
        )
        ratios = [r["p99_ms"] / r["p50_ms"] for r in [last, *pts] if r.get("p50_ms")]
        out.append(
            f"- The tail at {top} connections: p99 is {_span(ratios, '{:.1f}', 'x')} the p50 "
            f"(p99 {_span((r['p99_ms'] for r in [last, *pts]), '{:.0f}', ' ms')})."
        )
        beyond = [r["beyond_network_ms"] for r in [last, *pts] if r.get("beyond_network_ms")]
        if beyond:
            out.append(
                f"- Beyond the network at {top} connections: {_span(beyond, '{:.2f}', ' ms')} "
                "per image. It shares the server's CPU with the network, so the cheaper budgets, "
                "whose network time is smaller, gain less than their MFLOPs ratio."
            )
    single = _last(rows, concurrency=concs[0])
    engine_one = _last(engine["rows"], batch_size=1) if engine is not None else None
    if single is not None and engine_one is not None and concs[0] == 1:
        gap = single["p50_ms"] - engine_one["p50_ms"]
        out.append(
            f"- One connection, last exit: p50 {single['p50_ms']:.2f} ms over HTTP against "
            f"{engine_one['p50_ms']:.2f} ms for the engine alone at batch 1 (engine.json): "
            f"{gap:+.2f} ms for the request's way through HTTP, decoding and the answer."
        )
    return [*out, ""]


def batched_section(batched: Row) -> list[str]:
    rows = batched["rows"]
    pts = _points(rows)
    if not pts:
        return []
    first = pts[0]
    return [
        "### HTTP with several images per request (http-batched.json)",
        "",
        f"{first['concurrency']} clients sending {first['images_per_request']} images per "
        "request: the request overhead is shared by its images. Speed-up over the last exit "
        "(MFLOPs-efficiency): "
        + ", ".join(f"{_name(r)} {r['speedup']:.2f}x ({r['mflops_efficiency']:.2f})" for r in pts)
        + ".",
        "",
    ]


def peer_section(peer: Row, http: Row | None) -> list[str]:
    rows = peer["rows"]
    conns = sorted({r["connections"] for r in rows})
    machine = peer.get("machine", {})
    litserve = machine.get("litserve", "?")
    out = [
        "### Against a peer server (peer.json)",
        "",
        f"`exitwise bench peer`: LitServe {litserve} serving the same bundle's full network and "
        "`exitwise serve` (the last exit, then each budget), one at a time on the same pinned "
        "core, loaded by the same client. *x LitServe* and *x last exit* compare requests/s at "
        "the same number of connections.",
        "",
    ]
    for c in conns:
        lit = next((r for r in rows if r["server"] == "litserve" and r["connections"] == c), None)
        ours = [r for r in rows if r["server"] == "exitwise" and r["connections"] == c]
        if lit is None or not ours:
            continue
        budgets = [r for r in ours if r["workload"] != LAST_EXIT]
        last = next((r for r in ours if r["workload"] == LAST_EXIT), None)
        parts = [f"LitServe {lit['requests_per_s']:.0f} requests/s"]
        if last is not None:
            parts.append(
                f"the last exit {last['requests_per_s']:.0f} ({last['vs_litserve']:.2f}x LitServe)"
            )
        parts += [
            f"budget {_budget(r):.2f} {r['requests_per_s']:.0f} ({r['vs_litserve']:.2f}x LitServe, "
            f"{r['vs_last_exit']:.2f}x the last exit)"
            for r in sorted(budgets, key=lambda r: _budget(r) or 0.0)
        ]
        worst = max(r["p99_ms"] for r in ours)
        out.append(
            f"- {c} connection{'s' if c > 1 else ''}: "
            + "; ".join(parts)
            + f". p99: at most {worst:.0f} ms for exitwise, {lit['p99_ms']:.0f} ms for LitServe."
        )
    if http is not None:
        out += _peer_vs_http(rows, http["rows"])
    return [*out, ""]


def _peer_vs_http(peer: Sequence[Row], http: Sequence[Row]) -> list[str]:
    """The same budget's speed-up in both runs: they are separate invocations."""
    top = max(r["concurrency"] for r in http)
    pairs = []
    for p in peer:
        b = _budget(p)
        if p["server"] != "exitwise" or b is None or p["connections"] != top:
            continue
        for h in _points(http, concurrency=top):
            hb = _budget(h)
            if hb is not None and abs(hb - b) < 1e-3 and h.get("speedup"):
                pairs.append((b, p["vs_last_exit"], h["speedup"]))
    if not pairs:
        return []
    return [
        f"- The same budgets over the last exit at {top} connections in the two runs "
        "(peer.json, http.json): "
        + ", ".join(f"budget {b:.2f} {x:.2f}x and {y:.2f}x" for b, x, y in sorted(pairs))
        + ". The runs are separate invocations on a shared machine: compare ratios within one "
        "file."
    ]


def heavy_section(engine: Row | None, http: Row | None) -> list[str]:
    if engine is None and http is None:
        return []
    source = engine if engine is not None else http
    assert source is not None
    bundle = source.get("bundle", {})
    costs = bundle.get("exit_mflops", [])
    name = bundle.get("name", source.get("model", "?"))
    files = ", ".join(f for f, d in (("heavy-engine.json", engine), ("heavy-http.json", http)) if d)
    intro = f"The same benchmarks on `{name}`"
    if costs:
        intro += (
            f" (`{bundle.get('preset', '?')}`, {len(costs)} exits, {costs[0]:.1f} to "
            f"{costs[-1]:.1f} MFLOPs)"
        )
    out = [
        f"### The heavier model ({files})",
        "",
        intro + ": more work per stage against the same fixed cost per request and per row.",
        "",
    ]
    if engine is not None:
        for batch in sorted({r["batch_size"] for r in engine["rows"]}):
            pts = _points(engine["rows"], batch_size=batch)
            if pts:
                out.append(
                    f"- Engine, batch {batch}: MFLOPs-efficiency "
                    f"{_span(r['mflops_efficiency'] for r in pts)}."
                )
    if http is not None:
        top = max(r["concurrency"] for r in http["rows"])
        pts, last = _points(http["rows"], concurrency=top), _last(http["rows"], concurrency=top)
        if pts and last is not None:
            cheapest = min(pts, key=lambda r: r["mean_mflops"])
            out.append(
                f"- HTTP, {top} connections: MFLOPs-efficiency "
                f"{_span(r['mflops_efficiency'] for r in pts)}; the last exit serves "
                f"{last['images_per_s']:.0f} images/s, {_name(cheapest)} "
                f"{cheapest['images_per_s']:.0f}."
            )
    return [*out, ""]


def _markdown_rows(text: str) -> list[dict[str, str]]:
    """The first table of a markdown text as dicts keyed by its header."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    if len(lines) < 3:
        return []
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=False))
        for line in lines[2:]
    ]


def backends_section(text: str) -> list[str]:
    rows = _markdown_rows(text)
    try:
        by_batch: dict[int, list[float]] = {}
        same: list[float] = []
        for r in rows:
            by_batch.setdefault(int(r["batch"]), []).append(float(r["onnx speed-up"].rstrip("x")))
            same.append(float(r["same exit"].rstrip("%")))
    except (KeyError, ValueError):
        return []
    if not by_batch:
        return []
    return [
        "### Backends (backends.md)",
        "",
        "`exitwise bench backends`: the same early-exit loop over the PyTorch model and over "
        "its ONNX stage graphs in one process, on held-out images. onnxruntime against torch: "
        + "; ".join(f"{_span(v, '{:.2f}', 'x')} at batch {b}" for b, v in sorted(by_batch.items()))
        + f". Both backends send {_span(same, '{:.1f}', ' %')} of the images to the same exit.",
        "",
    ]


def calibration_section(cal: Row) -> list[str]:
    return [
        "### Calibration speed (calibration.json)",
        "",
        f"`exitwise bench calibration` on synthetic scores of {cal['images']:,} held-out and "
        f"{cal['test_images']:,} test images, {cal['exits']} exits: solving {cal['budgets']} "
        f"budgets takes {cal['solve_s']:.3f} s ({cal['solve_per_budget_ms']:.1f} ms per budget; "
        f"median of {cal['repeat']}), a whole calibration {cal['full_s']:.2f} s. The largest "
        f"(target - achieved) / target is {cal['max_relative_gap']:.1e}; "
        + (
            "no budget was exceeded"
            if not cal["exceeded"]
            else f"{cal['exceeded']} budgets were exceeded"
        )
        + ". The network's forward passes, which run once per bundle and are cached, are "
        "not included.",
        "",
    ]


def train_section(train: Row) -> list[str]:
    rows = train["rows"]
    by = {(r["weighting"], r["interval"]): r for r in rows}
    uniform = by.get(("uniform", "-"))
    meta = by.get(("l2w", "1"))
    if uniform is None or meta is None:
        return []
    out = [
        "### Training step (train.json)",
        "",
        f"`exitwise bench train`: `{train['preset']}`, batch {train['batch_size']}, "
        f"{train['precision']}, {_plural(train['threads'], 'thread')} on {train['device']}, "
        "uniform and "
        f"L2W iterations interleaved. A uniform iteration takes {uniform['ms_per_iteration']:.0f} "
        "ms.",
        "",
        f"- The meta step every iteration costs {meta['ratio']:.2f}x uniform's time per image"
        + (f" (target {meta['target']}x)" if meta.get("target") else "")
        + ". Per half batch, uniform runs one forward (F) and one backward (B) pass; the exact "
        "meta step adds the pseudo-gradient's backward, the meta half's forward and backward at "
        "the pseudo-updated weights, a Jacobian-vector product, and a real backward that needs "
        "the updated WPN: 2F + 3B + JVP against F + B, at least 2x even with a free JVP.",
    ]
    never = by.get(("l2w", "never"))
    hundred = by.get(("l2w", "100"))
    if never is not None:
        out.append(
            f"- Without a meta step (the WPN's forward and the weighted loss only) an L2W "
            f"iteration costs {never['ratio']:.2f}x."
        )
    if hundred is not None:
        line = (
            f"- Every 100 iterations ({hundred['how']}: 99 iterations without the meta step and "
            f"one with it) the cost is {hundred['ratio']:.2f}x"
        )
        if hundred.get("target"):
            line += f" against a target of {hundred['target']}x"
        if never is not None:
            line += (
                f"; it cannot go below the {never['ratio']:.2f}x of the iterations without "
                "a meta step"
            )
        out.append(line + ".")
    double = next((r for r in rows if "double-backward" in str(r["weighting"])), None)
    if double is not None:
        out.append(
            f"- The seed's second-order way (`meta.gradient: double-backward`, the same gradient) "
            f"costs {double['ratio']:.2f}x, against {meta['ratio']:.2f}x for the forward-mode "
            "product."
        )
    return [*out, ""]


# --- the whole reading ------------------------------------------------------------------------


def reading(bench: Path) -> list[str]:
    """Markdown lines reading the benchmark files in ``bench``: a ``## Reading the figures``
    section with one ``###`` part per benchmark found; ``[]`` when none is there."""
    engine = _load(bench / "engine.json")
    http = _load(bench / "http.json")
    batched = _load(bench / "http-batched.json")
    peer = _load(bench / "peer.json")
    heavy_engine = _load(bench / "heavy-engine.json")
    heavy_http = _load(bench / "heavy-http.json")
    backends = bench / "backends.md"
    cal = _load(bench / "calibration.json")
    train = _load(bench / "train.json")
    parts: list[str] = []
    if engine is not None:
        parts += engine_section(engine)
    if http is not None:
        parts += http_section(http, engine)
    if batched is not None:
        parts += batched_section(batched)
    if peer is not None:
        parts += peer_section(peer, http)
    parts += heavy_section(heavy_engine, heavy_http)
    if backends.is_file():
        parts += backends_section(backends.read_text())
    if cal is not None:
        parts += calibration_section(cal)
    if train is not None:
        parts += train_section(train)
    if not parts:
        return []
    head = [
        "## Reading the figures",
        "",
        "Every figure below is read from the file its heading names, under "
        "[benchmarks/](benchmarks/). Absolute figures depend on the machine and its load; "
        "ratios between workloads of one file carry over better.",
    ]
    machine = _machine(bench)
    if machine is not None:
        head += ["", f"**Machine.** {machine}."]
    return [*head, "", *parts]


def main() -> None:
    import sys

    bench = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/benchmarks")
    print("\n".join(reading(bench)))


if __name__ == "__main__":
    main()
