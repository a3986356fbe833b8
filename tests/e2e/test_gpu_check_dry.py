"""scripts/gpu-check.sh's dry run (``GPU_CHECK_DRY=1``): the GPU check, every part, with tiny
sizes on whatever machine runs the tests, so the script cannot rot between GPU leases.

The test lays out a carry folder as scripts/gpu-carry.sh does (Fashion-MNIST files, the demo
bundle, a wheel folder), here with fake images and a tiny calibrated bundle, and runs the script
with ``--pack`` as the run book's command does. Without CUDA the CUDA parts must say
"skipped: no CUDA" and everything else must run and leave its results. On this project's 2-core
machine: the dry run 60 s idle, 85 s with other processes busy (mostly process start-ups: some
twenty Python processes); the cut test 13 s; the carry folder 5 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from cli import main

from ..helpers import make_bundle, write_fashion_mnist

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def carry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A carry folder as scripts/gpu-carry.sh lays it out (the scripts only read it)."""
    root = tmp_path_factory.mktemp("carry")
    data = write_fashion_mnist(root / "data" / "fashion-mnist", n_train=400, n_test=100)
    bundle = root / "bundles" / "demo"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: two spinning threads run far slower
    try:
        make_bundle(bundle, data, steps=8, heldout_size=100, name="demo")
        args = ["calibrate", str(bundle), "--data-root", str(data), "--fractions", "0.3,0.6"]
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    (root / "wheels").mkdir()
    return root


def _check(tmp_path: Path, carry: Path, out: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), str(out), *args],
        cwd=REPO,
        env={
            **os.environ,
            "GPU_CHECK_DRY": "1",
            "GPU_CHECK_CARRY": str(carry),
            "GPU_CHECK_WORK": str(tmp_path / "work"),
            "PYTHON": sys.executable,
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path: Path, carry: Path) -> None:
    out = tmp_path / "out"
    proc = _check(tmp_path, carry, out, "--pack")
    stdout, stderr = proc.communicate(timeout=600)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # Packed as the device tool needs it: the summary and one archive, nothing else.
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tar.gz", "summary.md"]
    summary = (out / "summary.md").read_text()
    assert summary in done.stdout  # printed at the end, where the tool's reply shows it

    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    got = tmp_path / "unpacked"
    status = {
        line.split("\t")[0]: line.split("\t")
        for line in (got / "logs" / "status.tsv").read_text().splitlines()
    }
    assert [status[p][1] for p in ("setup", "tests", "serving", "train", "compare")] == ["ok"] * 5
    cuda = torch.cuda.is_available()
    slug = json.loads((got / "logs" / "environment.json").read_text())["slug"]
    res = got / "docs" / "benchmarks" / f"gpu-{slug}"
    if not cuda:
        assert slug == "none"
        assert status["tests"][4] == "skipped: no CUDA"
        for variant in ("bf16", "fp16", "onnx-cuda"):
            assert f"{variant}: skipped: no CUDA" in status["serving"][4]

    # Serving: the engine at batch 1 and batched, with both efficiencies, per operating point.
    engine = json.loads((res / "engine-fp32.json").read_text())
    rows = engine["rows"]
    assert {r["batch_size"] for r in rows} == {1, 8}
    assert {"mflops_efficiency", "oracle_efficiency"} <= set(rows[0])
    if shutil.which("wrk"):
        http = json.loads((res / "http-fp32.json").read_text())
        assert http["rows"] and "oracle" in json.dumps(http)
    else:
        assert "fp32 http: skipped: no wrk" in status["serving"][4]

    # Training: solo and shared step times, the fit, the comparison and its report.
    train = json.loads((res / "train.json").read_text())
    assert {"uniform", "l2w_meta"} <= set(train["raw_ms"])
    assert len(list(res.glob("train-shared-*.json"))) == 2
    fit = json.loads((res / "fit.json").read_text())
    assert fit["epochs"] >= 1 and fit["probes"] == 2 and fit["slowdown_l2w"] > 0
    report = (got / "docs" / "RESULTS-gpu.md").read_text()
    assert "## Initialisation on the uniform arm (one seed)" in report
    assert "`original`" in report and "`he`" in report
    assert (got / "docs" / "results-gpu" / "curves.png").read_bytes().startswith(b"\x89PNG")
    runs = json.loads((got / "docs" / "results-gpu" / "results.json").read_text())["runs"]
    assert sorted((r["weighting"], r["init"]) for r in runs) == [
        ("l2w", "original"),
        ("uniform", "he"),
        ("uniform", "original"),
    ]
    for part in ("tests", "serving", "train", "compare"):
        assert (got / "logs" / f"{part}.log").is_file()


@pytest.mark.slow
def test_a_part_over_its_box_is_cut_and_reported(tmp_path: Path, carry: Path) -> None:
    """A serving part with a box too short for it: cut, said so, its server gone, exit 1
    (about 15 s)."""
    out = tmp_path / "out"
    proc = _check(tmp_path, carry, out, GPU_CHECK_PARTS="serving", GPU_CHECK_BOXES="serving=9")
    proc.communicate(timeout=300)
    assert proc.returncode == 1
    fields = (out / "logs" / "status.tsv").read_text().splitlines()[1].split("\t")
    assert (fields[0], fields[1], fields[3]) == ("serving", "cut at its box", "9")
    assert "| serving | cut at its box |" in (out / "summary.md").read_text()
    assert not list((out / "logs").glob("pg.*"))  # every group it started was ended
    for log in (out / "logs").glob("serve-*.log"):  # a server it started no longer answers
        port = re.search(r"127\.0\.0\.1:(\d+)", log.read_text())
        if port:
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", int(port[1])), timeout=1).close()
