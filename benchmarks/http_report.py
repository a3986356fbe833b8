"""``exitwise bench http``'s table: ratios against the last-exit baseline, oracle efficiency
(from ``exitwise bench engine --json``'s per-exit times) and the markdown rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BenchError
from .tables import markdown_table


def add_ratios(rows: list[dict[str, Any]], oracle: list[float] | None) -> None:
    """Speed-up, MFLOPs ratio and efficiencies against the first row (the last-exit baseline)."""
    base = rows[0]
    for row in rows:
        speedup = row["images_per_s"] / base["images_per_s"] if base["images_per_s"] else np.nan
        ratio = base["mean_mflops"] / row["mean_mflops"] if row["mean_mflops"] else np.nan
        row["speedup"] = float(speedup)
        row["mflops_ratio"] = float(ratio)
        row["mflops_efficiency"] = float(speedup / ratio) if ratio else float("nan")
        # wrk's rounds ran interleaved, round i of every workload next to round i of the
        # baseline: the speed-up of each pair, and their median (one slow spell moves it less).
        mine, theirs = row.get("requests_per_s_rounds"), base.get("requests_per_s_rounds")
        if mine and theirs and len(mine) == len(theirs) and all(theirs):
            pairs = [m / t for m, t in zip(mine, theirs, strict=True)]
            row["speedup_rounds"] = pairs
            row["speedup_median"] = float(np.median(pairs))
        if oracle is not None and row["images_per_s"]:
            hist = row["exit_histogram"]
            total = sum(hist.values())
            per_image = sum(oracle[int(e) - 1] * n for e, n in hist.items()) / total
            # Oracle time / measured time, both per image served.
            row["oracle_efficiency"] = float(per_image * row["images_per_s"])
            # With the server saturating its core(s), the time per image it spends on anything
            # but the network: HTTP, decoding, queues, bookkeeping.
            row["beyond_network_ms"] = float(1000 * (1 / row["images_per_s"] - per_image))


def read_oracle(path: Path) -> dict[str, list[float]]:
    """Per-exit seconds per image by batch size, from ``exitwise bench engine --json``."""
    try:
        data = json.loads(path.read_text())
        return {str(k): [float(x) for x in v] for k, v in data["oracle_seconds_per_image"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BenchError(f"{path}: not a `bench engine --json` result ({err})") from None


def oracle_key(times: dict[str, list[float]] | None, batch: int) -> str | None:
    """The measured batch size closest to ``batch`` from below (else the smallest)."""
    if not times:
        return None
    sizes = sorted(int(k) for k in times)
    below = [s for s in sizes if s <= batch]
    return str(below[-1] if below else sizes[0])


def markdown(rows: list[dict[str, Any]]) -> str:
    header = [
        "workload", "conc.", "img/req", "images/s", "p50 ms", "p95 ms", "p99 ms", "mean MFLOPs",
        "speed-up", "MFLOPs ratio", "MFLOPs-eff.", "oracle eff.", "beyond network ms/img",
        "overhead p50 (server)", "exits",
    ]  # fmt: skip
    cells = []
    for r in rows:
        exits = " ".join(f"{k}:{v}" for k, v in r["exit_histogram"].items())
        oracle = r.get("oracle_efficiency")
        beyond = r.get("beyond_network_ms")
        overhead = "-"
        if r["overhead_fraction_p50"] is not None:  # None: unknown (the wrk client)
            client, server = r["overhead_fraction_p50"], r["server_overhead_fraction_p50"]
            overhead = f"{client:.0%} ({server:.0%})"
        cells.append(
            [
                r["workload"],
                r["concurrency"],
                r["images_per_request"],
                f"{r['images_per_s']:.1f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['mean_mflops']:.3f}",
                f"{r['speedup']:.2f}",
                f"{r['mflops_ratio']:.2f}",
                f"{r['mflops_efficiency']:.2f}",
                "-" if oracle is None else f"{oracle:.2f}",
                "-" if beyond is None else f"{beyond:.3f}",
                overhead,
                exits,
            ]
        )
    return markdown_table(header, cells)
