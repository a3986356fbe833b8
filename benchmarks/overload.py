"""``exitwise bench http --overload 1,2,4``: open-loop arrivals beyond what the server can do.

First the last exit's capacity C (requests/s) is measured closed loop. Then requests for the
full network (``max_exit=K``) with a ``deadline_ms`` arrive open loop (each of many ``wrk``
connections waits an exponential time before its next request, so arrivals are Poisson at the
offered rate) at 1x, 2x, 4x C, once with ``degrade=false`` (the server sheds: a full queue is a
503) and once with ``degrade=true`` (it steps down to cheaper operating points first).

Reported per run: offered and answered rates, goodput (answers within the deadline per second),
p50/p99, the share answered in time, 503s, and an accuracy estimate: the calibrated test
accuracy of the operating point (or exit) that served each answer, weighted by how many it
served (the server does not see labels; answers stopped by the deadline are counted at their
plan's accuracy, so the estimate is an upper bound for them).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np

from .wrk import run_wrk, scrape, served, write_bodies, write_script


def _settle(url: str, body: bytes, params: dict[str, Any], headers: dict[str, str]) -> None:
    """Single requests until the server has stepped all the way back up (at most 10 s)."""
    end = time.monotonic() + 10
    send = {"content-type": "image/png", **headers}
    while time.monotonic() < end:
        httpx.post(f"{url}/v1/classify", content=body, params=params, headers=send, timeout=30)
        text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
        if "exitwise_degradation_level 0.0" in text:
            return
        time.sleep(0.05)


def _accuracy(info: dict[str, Any], did: dict[str, Any]) -> float | None:
    """Estimated accuracy (percent) of the answers, from the calibration's test figures.

    An answer stepped down to an operating point counts that point's test accuracy. The others
    asked for the full network, so each counts the test accuracy of the exit it came from (a
    ``deadline_ms`` stops them early under load): their exits are the server's exit histogram
    less what the stepped-down answers are expected to have used (the points' test exit
    fractions)."""
    points = {p["name"]: p for p in info["operating_points"]}
    per_exit = [e.get("test_accuracy") for e in info["exits"]]
    total = did["images"]
    if not total or any(a is None for a in per_exit):
        return None
    hist = np.array(
        [did["exit_histogram"].get(str(k + 1), 0) for k in range(len(per_exit))], dtype=float
    )
    weighted, counted = 0.0, 0.0
    for name, n in did["degraded"].items():
        test = (points.get(name) or {}).get("test") or {}
        if "accuracy" not in test:
            continue
        weighted += n * test["accuracy"]
        counted += n
        fractions = test.get("exit_fractions")
        if fractions is not None and len(fractions) == len(hist):
            hist -= n * np.asarray(fractions, dtype=float)
    rest = total - counted
    hist = np.clip(hist, 0.0, None)
    if rest > 0 and hist.sum() > 0:
        weighted += rest * float(np.dot(hist / hist.sum(), per_exit))
        counted += rest
    return weighted / counted if counted else None


def run_overload(
    url: str,
    info: dict[str, Any],
    images: list[bytes],
    *,
    multiples: list[float],
    duration_s: float,
    deadline_ms: float,
    connections: int = 256,
    client_cpus: str | None = None,
    headers: dict[str, str] | None = None,
    say: Any = None,
) -> dict[str, Any]:
    say = say or (lambda _: None)
    headers = headers or {}
    k = len(info["exits"])
    base = {"max_exit": k, "top_k": 0}
    send = {"Content-Type": "image/png", **headers}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="exitwise-overload-") as tmp:
        folder = Path(tmp)
        listing = write_bodies(folder / "bodies", images)
        closed = write_script(
            folder / "capacity", listing, f"/v1/classify?{urlencode({**base, 'degrade': 'false'})}",
            send,
        )  # fmt: skip
        run_wrk(url, closed, connections=16, duration_s=2.0)  # warm-up
        capacity = run_wrk(url, closed, connections=16, duration_s=duration_s, cpus=client_cpus)
        say(f"last-exit capacity: {capacity.requests_per_s:.0f} requests/s (closed loop, 16)")
        for m in multiples:
            rate = m * capacity.requests_per_s
            for degrade in (False, True):
                params = {**base, "deadline_ms": deadline_ms, "degrade": str(degrade).lower()}
                script = write_script(
                    folder / f"m{m}-{degrade}",
                    listing,
                    f"/v1/classify?{urlencode(params)}",
                    send,
                    rate=rate,
                    connections=connections,
                    within_ms=deadline_ms,
                    seed=int(m * 1000),
                )
                _settle(url, images[0], base, headers)
                before = scrape(url, headers)
                run = run_wrk(
                    url,
                    script,
                    connections=connections,
                    duration_s=duration_s,
                    cpus=client_cpus,
                )
                did = served(before, scrape(url, headers), k)
                shed = did["statuses"].get("503", 0)
                in_time = run.requests * run.within_pct / 100
                row = {
                    "multiple": m,
                    "degrade": degrade,
                    "offered_per_s": rate,
                    "answered_per_s": run.requests_per_s,
                    # 503s come back at once, so they are among the answers "in time": take
                    # them out to count the useful ones.
                    "goodput_per_s": max(0.0, in_time - shed) / run.seconds,
                    "p50_ms": run.p50_ms,
                    "p99_ms": run.p99_ms,
                    "in_time_pct": 100 * max(0.0, in_time - shed) / max(1, run.requests),
                    "status_503": shed,
                    "statuses": did["statuses"],
                    "degraded": did["degraded"],
                    "exit_histogram": did["exit_histogram"],
                    "mean_mflops": did["mean_mflops"] if did["images"] else None,
                    "accuracy_estimate": _accuracy(info, did),
                    "requests": run.requests,
                    "socket_errors": run.socket_errors,
                }
                rows.append(row)
                say(
                    f"{m:g}x ({rate:.0f}/s), degrade {'on ' if degrade else 'off'}: "
                    f"{row['goodput_per_s']:.0f} good/s, p99 {run.p99_ms:.1f} ms, "
                    f"{shed} x 503"
                )
    tests = [(p.get("test") or {}).get("accuracy") for p in info["operating_points"]]
    cheapest = min(info["operating_points"], key=lambda p: p["expected_mflops"], default=None)
    return {
        "cheapest_point": None if cheapest is None else cheapest["name"],
        "cheapest_point_accuracy": None
        if cheapest is None
        else (cheapest.get("test") or {}).get("accuracy"),
        "points_test_accuracy": tests,
        "capacity_per_s": capacity.requests_per_s,
        "deadline_ms": deadline_ms,
        "connections": connections,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    from .tables import markdown_table

    header = [
        "offered", "degrade", "answered/s", "goodput/s", "p50 ms", "p99 ms",
        f"in time (<= {result['deadline_ms']:g} ms)", "503s", "mean MFLOPs", "accuracy (est.)",
    ]  # fmt: skip
    cells = [
        [
            f"{r['multiple']:g}x ({r['offered_per_s']:.0f}/s)",
            "on" if r["degrade"] else "off",
            f"{r['answered_per_s']:.0f}",
            f"{r['goodput_per_s']:.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['in_time_pct']:.1f}%",
            r["status_503"],
            "-" if r["mean_mflops"] is None else f"{r['mean_mflops']:.2f}",
            "-" if r["accuracy_estimate"] is None else f"{r['accuracy_estimate']:.1f}",
        ]
        for r in result["rows"]
    ]
    return markdown_table(header, cells, "llrrrrrrrr")


def plot(result: dict[str, Any], path: Path) -> None:
    """Goodput and p99 against the offered load, degradation off and on."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from exitwise.fileio import atomic_write_bytes

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for degrade, colour in ((False, "tab:red"), (True, "tab:green")):
        rows = [r for r in result["rows"] if r["degrade"] is degrade]
        xs = [r["multiple"] for r in rows]
        label = "degrade on" if degrade else "degrade off"
        left.plot(xs, [r["goodput_per_s"] for r in rows], "o-", color=colour, label=label)
        right.plot(xs, [r["p99_ms"] for r in rows], "o-", color=colour, label=label)
    left.plot(xs, [r["offered_per_s"] for r in rows], ":", color="grey", label="offered")
    right.axhline(result["deadline_ms"], color="black", ls="--", lw=0.8, label="deadline_ms")
    left.set(xlabel="offered load (x last-exit capacity)", ylabel="answers in time per s")
    right.set(xlabel="offered load (x last-exit capacity)", ylabel="p99 latency (ms)")
    right.set_yscale("log")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
