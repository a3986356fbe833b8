"""A run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from exitwise.bundle import load_bundle
from training.checkpoint import load_checkpoint

from ..training_helpers import (
    REPO,
    fake_fmnist,
    one_thread,  # noqa: F401  (autouse: one thread)
    tiny_recipe,
    write_recipe,
)

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli", "train", "--config", str(config), "--out", str(out),
            *extra]  # fmt: skip


def test_sigkill_and_resume_gives_bit_identical_weights(tmp_path: Path) -> None:
    data = fake_fmnist(tmp_path / "data", n_train=292, n_test=20)  # 192 training images
    recipe = tiny_recipe(data, epochs=2, checkpoint__every_steps=2, meta__interval=2,
                         eval__test=False)  # fmt: skip
    config = write_recipe(tmp_path / "r.yaml", recipe)

    whole = tmp_path / "whole"
    done = subprocess.run(_train_cmd(config, whole), cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(config, killed), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    try:
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-run, right after its first checkpoint
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "manifest.json").exists(), "the run finished before it was killed"
    at = load_checkpoint(checkpoint).progress
    assert 0 < at.step < 12

    resumed = subprocess.run(_train_cmd(config, killed, "--resume"), cwd=REPO, env=ENV,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {killed} at epoch" in resumed.stderr

    a, b = load_bundle(whole), load_bundle(killed)
    # Bit-identical weights. (Not the file's sha256: safetensors writes its metadata mapping in
    # a per-process random order, so equal tensors can give different files.)
    wa, wb = a.state_dict(), b.state_dict()
    assert wa.keys() == wb.keys()
    for name, tensor in wa.items():
        assert torch.equal(tensor, wb[name]), name
    assert a.manifest.training.heldout_exit_accuracy == b.manifest.training.heldout_exit_accuracy
    ca, cb = load_checkpoint(whole / "checkpoints" / "last.pt"), load_checkpoint(checkpoint)
    for name, tensor in ca.payload["wpn"].items():
        assert torch.equal(tensor, cb.payload["wpn"][name]), name
    records = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 13))  # records after the checkpoint were written once
