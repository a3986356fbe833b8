"""The shipped demo recipe through the command line, then ``exitwise inspect`` on the bundle."""

from __future__ import annotations

import json
from pathlib import Path

from ..training_helpers import (
    REPO,
    fake_fmnist,
    one_thread,  # noqa: F401  (autouse: one thread)
    run_cli,
)


def test_demo_recipe_trains_and_inspect_reads_the_bundle(tmp_path: Path) -> None:
    data = fake_fmnist(tmp_path / "data", n_train=400, n_test=50)
    out = tmp_path / "demo"
    # The demo recipe as shipped, shrunk to seconds: fewer images, a tiny network.
    sets = ["data.heldout_size=100", "data.train_subset=256", "batch_size=64", "epochs=1",
            "model.kwargs.channels=4", "model.kwargs.growth_rate=2",
            "model.kwargs.head_channels=8", "log.tensorboard=false"]  # fmt: skip
    args = ["train", "--config", str(REPO / "configs" / "demo.yaml"), "--out", str(out),
            "--data-root", str(data), "--device", "cpu"]  # fmt: skip
    proc = run_cli([*args, *[a for s in sets for a in ("--set", s)]])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "held-out top-1 %" in proc.stdout and "Traceback" not in proc.stderr
    info = run_cli(["inspect", str(out), "--json"])
    assert info.returncode == 0, info.stderr
    data_out = json.loads(info.stdout)
    assert data_out["kind"] == "bundle" and data_out["preset"] == "msdnet-fmnist"
    assert len(data_out["exits"]) == 4 and all("heldout_accuracy" in e for e in data_out["exits"])
    assert data_out["training"]["weighting"] == "l2w"
    assert data_out["heldout"]["size"] == 100
