"""Two processes on the CPU (gloo) via torchrun: one bundle, written by rank 0 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from exitwise.bundle import load_bundle

from ..training_helpers import (
    REPO,
    fake_fmnist,
    one_thread,  # noqa: F401  (autouse: one thread)
    tiny_recipe,
    write_recipe,
)


def test_two_process_ddp_writes_one_bundle(tmp_path: Path) -> None:
    data = fake_fmnist(tmp_path / "data", n_train=164, n_test=20)
    config = write_recipe(
        tmp_path / "ddp.yaml", tiny_recipe(data, epochs=2, checkpoint__every_steps=1)
    )
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cli", "train", "--config", str(config), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = load_bundle(out)
    bundle.verify()
    summary = bundle.manifest.training.model_dump()
    assert summary["world_size"] == 2 and summary["steps"] == 2 * (64 // 32)
    assert len(summary["heldout_exit_accuracy"]) == 4
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4]  # one writer
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "heldout_indices.json", "manifest.json", "recipe.yaml",
        "train_log.jsonl", "weights.safetensors",
    ]  # fmt: skip
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.pt"]
    # Each process trained on its half of every global batch: the weights-statistics rows
    # are rank 0's local batch (16 images).
    assert "meta_counts" in records[0] and sum(records[0]["meta_counts"]) == 16
