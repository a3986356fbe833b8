"""Helpers for the serving tests: a calibrated tiny bundle (built once per test session), PNG
encoding, the simulation the server must reproduce, and a real ``exitwise serve`` process.

The calibration written here uses the calibration package's threshold rule and evaluation at
fixed values of q (geometric exit distribution p_k ~ q^k) rather than budgets.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from calibration.build import split_result, thresholds_json
from calibration.control_table import control_table
from calibration.evaluate import evaluate_thresholds
from calibration.scores import SplitScores
from calibration.solver import BudgetSolver
from calibration.thresholds import find_thresholds
from exitwise.bundle import (
    AnytimeExit,
    Bundle,
    Calibration,
    OperatingPoint,
    utc_now,
    write_calibration,
)
from exitwise.datasets import EvalImages, open_dataset
from exitwise.policy import confidence_and_prediction, decide_exits
from exitwise.preprocess import normalize
from tests.helpers import make_bundle, write_fashion_mnist

REPO = Path(__file__).resolve().parents[1]


def documented_metrics() -> list[str]:
    """The metric table of docs/serving.md (what operators are told to expect)."""
    text = (REPO / "docs" / "serving.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(exitwise_\w+)` \|", section, re.M)


def assert_documented_metrics_exported(metrics_text: str) -> None:
    """Every metric of docs/serving.md's table has samples in a /metrics page."""
    families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
    documented = documented_metrics()
    assert len(documented) >= 10
    for name in documented:
        family = families.get(name.removesuffix("_total"))
        assert family is not None and family.samples, f"{name} is not exported"


@dataclass(frozen=True)
class Split:
    pixels: np.ndarray  # uint8 [N, C, H, W], what EvalImages yields (crop, before padding)
    labels: np.ndarray


@dataclass(frozen=True)
class Served:
    """A calibrated tiny bundle, the fake data it was trained on, and its two splits."""

    bundle: Bundle
    data_root: Path | None
    heldout: Split
    test: Split

    @property
    def path(self) -> Path:
        return self.bundle.path


def load_split(bundle: Bundle, data_root: Path | None, split: str) -> Split:
    if split == "heldout":
        view = EvalImages(
            open_dataset("fashion-mnist", "train", data_root),
            bundle.manifest.preprocessing,
            bundle.heldout_indices(),
        )
    else:
        view = EvalImages(
            open_dataset("fashion-mnist", "test", data_root), bundle.manifest.preprocessing
        )
    pixels = np.stack([view[i][0].numpy() for i in range(len(view))])
    return Split(pixels=pixels, labels=np.asarray(view.labels))


@torch.no_grad()
def all_confidences(
    bundle: Bundle, pixels: np.ndarray, chunk: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 ``[N, K]`` confidences and ``[N, K]`` predictions from full forward passes (one
    batch for up to ``chunk`` images)."""
    model = bundle.load_model()
    confs, preds = [], []
    for start in range(0, len(pixels), chunk):
        x = torch.from_numpy(pixels[start : start + chunk])
        pairs = [
            confidence_and_prediction(out)
            for out in model(normalize(x, bundle.manifest.preprocessing))
        ]
        confs.append(torch.stack([c for c, _ in pairs], dim=1).numpy())
        preds.append(torch.stack([p for _, p in pairs], dim=1).numpy())
    return np.concatenate(confs), np.concatenate(preds)


def simulate(
    conf: np.ndarray, pred: np.ndarray, thresholds: np.ndarray, max_index: int | None = None
):
    """Calibration's simulation: exit indices and predictions from all confidences."""
    cap = None if max_index is None else np.full(conf.shape[0], max_index, dtype=np.int64)
    exits = decide_exits(conf, thresholds, cap)
    return exits, pred[np.arange(len(exits)), exits]


def _scores(conf: np.ndarray, pred: np.ndarray, labels: np.ndarray) -> SplitScores:
    top5 = np.ones_like(pred, dtype=bool)  # not used by the serving tests
    return SplitScores(confidence=conf, prediction=pred, top5=top5, labels=labels)


def write_test_calibration(
    bundle: Bundle, heldout: Split, test: Split, qs: Sequence[float] = (0.3, 1.0, 2.0)
) -> Calibration:
    """Operating points ``q0.3``, ``q1``, ``q2`` (cheap to expensive) solved with calibration's
    threshold rule and evaluated with its evaluation; the default is the middle one; and
    calibration's control table for budget control.

    (``exitwise calibrate`` names its points after budgets; fixed q values keep these tests
    independent of the tiny model's exact costs.)"""
    exit_mflops = bundle.manifest.exit_mflops
    h = _scores(*all_confidences(bundle, heldout.pixels), heldout.labels)
    t = _scores(*all_confidences(bundle, test.pixels), test.labels)
    points = []
    for q in qs:
        thr = find_thresholds(h.confidence, q)
        points.append(
            OperatingPoint(
                name=f"q{q:g}",
                q=q,
                thresholds=thresholds_json(thr),
                heldout=split_result(evaluate_thresholds(h, thr, exit_mflops)),
                test=split_result(evaluate_thresholds(t, thr, exit_mflops)),
            )
        )
    anytime = [
        AnytimeExit(
            exit=j + 1,
            mflops=exit_mflops[j],
            heldout_top1=float(h.correct[:, j].mean() * 100),
            heldout_top5=100.0,
            test_top1=float(t.correct[:, j].mean() * 100),
            test_top5=100.0,
        )
        for j in range(len(exit_mflops))
    ]
    calibration = Calibration(
        weights_sha256=bundle.weights_sha256,
        heldout_sha256=bundle.manifest.heldout.sha256 if bundle.manifest.heldout else "0" * 64,
        created=utc_now(),
        exit_mflops=exit_mflops,
        operating_points=points,
        default_operating_point=points[len(points) // 2].name,
        anytime=anytime,
        control=control_table(BudgetSolver(h.confidence, exit_mflops), exit_mflops),
    )
    write_calibration(bundle, calibration)
    return calibration


_SERVED: dict[str, Served] = {}


def served_bundle(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """The calibrated tiny bundle, trained once per test session (shared by every module)."""
    if "tiny" not in _SERVED:
        root = tmp_path_factory.mktemp("serving")
        data = write_fashion_mnist(root / "data")
        # One intra-op thread: on a busy 2-core machine two spinning threads make this tiny
        # training run ten times slower, not faster.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            bundle = make_bundle(root / "bundle", data)
            heldout = load_split(bundle, data, "heldout")
            test = load_split(bundle, data, "test")
            write_test_calibration(bundle, heldout, test)
        finally:
            torch.set_num_threads(threads)
        _SERVED["tiny"] = Served(bundle=bundle, data_root=data, heldout=heldout, test=test)
    return _SERVED["tiny"]


def png(pixels: np.ndarray) -> bytes:
    """A ``[C, H, W]`` uint8 image as PNG bytes (lossless, so decoding gives the same pixels)."""
    arr = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# --- a real server process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    bundle: Path, log: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> ServerProcess:
    """``exitwise serve BUNDLE`` on 127.0.0.1 and a free port; returns once /readyz is 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", str(bundle), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    handle = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    handle.close()
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server not ready after {timeout} s:\n{server.output()}")


def stop_server(server: ServerProcess, timeout: float = 30) -> int:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return int(server.proc.returncode)


def running_server(bundle: Path, log: Path, *args: str, **kw: object) -> Iterator[ServerProcess]:
    """For fixtures: start, yield, always stop."""
    server = start_server(bundle, log, *args, **kw)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop_server(server)
