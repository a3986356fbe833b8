"""``exitwise bench peer``: exitwise and LitServe on the same bundle, cores, client and images.

One server at a time, each started in its own process group pinned to the server's cores
(``taskset``), loaded by ``wrk`` pinned to the client's cores, then stopped with its whole
group, and the group checked gone before the next starts: LitServe's worker processes outlive
a SIGTERM to their parent and, left running, keep a core busy and skew every later figure.
Rounds alternate the servers, so a change in machine load hits both.

exitwise runs the last exit (``max_exit=K``) and every calibrated operating point; LitServe the
full network with its own batching. Ratios are taken within a round and concurrency level.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from exitwise.errors import ExitwiseError

from .server_metrics import scrape, served
from .wrk import WrkResult, run_wrk, write_bodies, write_script


@dataclass
class ServerProcess:
    """A server started in its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the whole group, SIGKILL what is left after ``grace_s``, and wait until
        no process of the group remains."""
        pgid = self.proc.pid
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + wait_s
            while time.monotonic() < end:
                self.proc.poll()
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)
        self.proc.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        raise ExitwiseError(f"{self.name}: processes of group {pgid} survived SIGKILL")


def start_server(
    name: str, cmd: Sequence[str], ready_url: str, cpus: str | None, logs: Path, timeout_s: float
) -> ServerProcess:
    import httpx

    if cpus is not None:
        taskset = shutil.which("taskset")
        if taskset is None:
            raise ExitwiseError("--server-cpus needs `taskset` (util-linux)")
        cmd = [taskset, "-c", cpus, *cmd]
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(name, proc, log)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ExitwiseError(f"{name} exited with {proc.returncode} at start: {tail[0]}")
        try:
            if httpx.get(ready_url, timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise ExitwiseError(f"{name} was not ready after {timeout_s:.0f} s (log: {log})")


@dataclass
class Measured:
    server: str
    workload: str
    params: dict[str, Any]
    connections: int
    runs: list[WrkResult] = field(default_factory=list)
    images: int = 0
    mflops_sum: float = 0.0
    exits: dict[str, int] = field(default_factory=dict)

    def add(self, run: WrkResult, did: dict[str, Any] | None) -> None:
        self.runs.append(run)
        if did is not None:
            self.images += did["images"]
            if did["images"]:
                self.mflops_sum += did["mean_mflops"] * did["images"]
            for k, v in did["exit_histogram"].items():
                self.exits[k] = self.exits.get(k, 0) + v

    def row(self) -> dict[str, Any]:
        seconds = sum(r.seconds for r in self.runs)
        requests = sum(r.requests for r in self.runs)
        p50 = statistics.median(r.p50_ms for r in self.runs)
        p99 = statistics.median(r.p99_ms for r in self.runs)
        return {
            "server": self.server,
            "workload": self.workload,
            "params": self.params,
            "connections": self.connections,
            "requests": requests,
            "errors": sum(r.non_2xx + r.socket_errors for r in self.runs),
            "requests_per_s": requests / seconds if seconds else 0.0,
            "requests_per_s_rounds": [r.requests_per_s for r in self.runs],
            "p50_ms": p50,
            "p95_ms": statistics.median(r.p95_ms for r in self.runs),
            "p99_ms": p99,
            "p99_over_p50": p99 / p50 if p50 else float("inf"),
            "p50_ms_rounds": [r.p50_ms for r in self.runs],
            "p99_ms_rounds": [r.p99_ms for r in self.runs],
            "mean_mflops": self.mflops_sum / self.images if self.images else None,
            "exit_histogram": dict(sorted(self.exits.items(), key=lambda kv: int(kv[0]))),
        }


def compare(
    bundle: Path,
    images: list[bytes],
    *,
    exit_mflops: Sequence[float],
    budgets: Sequence[float],
    connections: Sequence[int],
    rounds: int,
    duration_s: float,
    port: int,
    server_cpus: str | None,
    client_cpus: str | None,
    torch_threads: int,
    litserve_batch: int,
    litserve_timeout_ms: float,
    start_timeout_s: float = 180.0,
    say: Any = None,
) -> dict[str, Any]:
    """Rows per (server, workload, connections), pooled over the rounds; see the module doc."""
    say = say or (lambda _: None)
    k = len(exit_mflops)
    url = f"http://127.0.0.1:{port}"
    loads: list[tuple[str, dict[str, Any]]] = [("last exit", {"max_exit": k})]
    loads += [(f"budget {b:g}", {"budget_mflops": b}) for b in budgets]
    measured: dict[tuple[str, str, int], Measured] = {}
    with tempfile.TemporaryDirectory(prefix="exitwise-peer-") as tmp:
        folder = Path(tmp)
        pngs = write_bodies(folder / "png", images)
        jsons = write_bodies(
            folder / "json",
            [json.dumps({"image": base64.b64encode(b).decode()}).encode() for b in images],
        )
        scripts = {
            label: write_script(
                folder / f"exitwise-{i}",
                pngs,
                f"/v1/classify?{urlencode({**params, 'top_k': 0, 'degrade': 'false'})}",
                {"Content-Type": "image/png"},
            )
            for i, (label, params) in enumerate(loads)
        }
        peer_script = write_script(
            folder / "litserve", jsons, "/predict", {"Content-Type": "application/json"}
        )
        py = sys.executable
        commands = {
            "exitwise": (
                [py, "-m", "cli", "serve", str(bundle), "--port", str(port),
                 "--torch-threads", str(torch_threads), "--log-level", "warning"],
                f"{url}/readyz",
            ),
            "litserve": (
                [py, "-m", "benchmarks.litserve_peer", str(bundle), "--port", str(port),
                 "--torch-threads", str(torch_threads), "--max-batch-size", str(litserve_batch),
                 "--batch-timeout-ms", str(litserve_timeout_ms)],
                f"{url}/health",
            ),
        }  # fmt: skip
        for r in range(rounds):
            for name, (cmd, ready) in commands.items():
                say(f"round {r + 1}/{rounds}: starting {name}")
                server = start_server(name, cmd, ready, server_cpus, folder, start_timeout_s)
                try:
                    work = loads if name == "exitwise" else [("full network", {})]
                    first = scripts[loads[0][0]] if name == "exitwise" else peer_script
                    run_wrk(url, first, connections=max(connections), duration_s=2.0)  # warm-up
                    for c in connections:
                        for label, params in work:
                            script = scripts[label] if name == "exitwise" else peer_script
                            before = scrape(url) if name == "exitwise" else None
                            run = run_wrk(
                                url, script, connections=c, duration_s=duration_s, cpus=client_cpus
                            )
                            did = served(before, scrape(url), k) if before is not None else None
                            key = (name, label, c)
                            if key not in measured:
                                measured[key] = Measured(name, label, params, c)
                            measured[key].add(run, did)
                            say(
                                f"  {name} {label} c={c}: {run.requests_per_s:.0f} req/s, "
                                f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms"
                            )
                finally:
                    server.stop()
    rows = [m.row() for m in measured.values()]
    _ratios(rows)
    return {"rows": rows}


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Against LitServe and against exitwise's own last exit, at the same connections."""
    by = {(r["server"], r["workload"], r["connections"]): r for r in rows}
    for r in rows:
        peer = by.get(("litserve", "full network", r["connections"]))
        last = by.get(("exitwise", "last exit", r["connections"]))
        r["vs_litserve"] = r["requests_per_s"] / peer["requests_per_s"] if peer else None
        r["vs_last_exit"] = (
            r["requests_per_s"] / last["requests_per_s"]
            if last and r["server"] == "exitwise"
            else None
        )


def markdown(rows: list[dict[str, Any]]) -> str:
    from .tables import markdown_table

    header = [
        "connections", "server", "workload", "requests/s", "p50 ms", "p99 ms", "p99/p50",
        "mean MFLOPs", "x LitServe", "x last exit", "errors",
    ]  # fmt: skip
    cells = []
    for r in sorted(rows, key=lambda r: (r["connections"], r["server"] != "litserve")):
        mflops = r["mean_mflops"]
        cells.append(
            [
                r["connections"],
                r["server"],
                r["workload"],
                f"{r['requests_per_s']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['p99_over_p50']:.1f}",
                "-" if mflops is None else f"{mflops:.2f}",
                "-" if r["vs_litserve"] is None else f"{r['vs_litserve']:.2f}",
                "-" if r["vs_last_exit"] is None else f"{r['vs_last_exit']:.2f}",
                r["errors"],
            ]
        )
    return markdown_table(header, cells, "rllrrrrrrrr")
