"""``exitwise train`` on bad input: one line, exit status 1, nothing overwritten."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
import torch

from cli import main

from ..helpers import write_idx
from ..training_helpers import (
    fake_fmnist,
    one_thread,  # noqa: F401  (autouse: one thread)
    tiny_recipe,
    write_recipe,
)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A recipe file and the directory of a finished tiny run."""
    torch.set_num_threads(1)  # module scope: runs before the per-test one_thread fixture
    base = tmp_path_factory.mktemp("cli")
    data = fake_fmnist(base / "data", n_train=164, n_test=20)
    config = write_recipe(base / "tiny.yaml", tiny_recipe(data, eval__test=False))
    out = base / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    return config, out


def _fails(args: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert match in err, err


def test_finished_run_is_left_alone(
    finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, out = finished
    capsys.readouterr()
    before = _snapshot(out)
    base = ["train", "--config", str(config), "--out", str(out)]
    _fails(base, capsys, "already holds a training run (manifest.json")
    _fails([*base, "--resume", "--overwrite"], capsys, "exclude each other")
    _fails([*base, "--resume", "--set", "model.kwargs.channels=6"], capsys,
           "was trained with model=")  # fmt: skip
    _fails([*base, "--resume", "--set", "weighting=uniform"], capsys, "weighting='l2w'")
    assert main(["train", "--out", str(out), "--resume"]) == 0  # recipe from OUT/recipe.yaml
    assert "already finished" in capsys.readouterr().err
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.preset=msdnet-nope"], "unknown model 'msdnet-nope'"),
        (["model.preset=msdnet-cifar10"], "takes 3-channel images; fashion-mnist has 1"),
        (["model.kwargs.num_classes=7"], "has 7 classes; fashion-mnist has 10"),
        (["model.kwargs.colour=1"], "unexpected keyword argument 'colour'"),
        (["epochz=1"], "unknown recipe key 'epochz'"),
        (["epochs=abc"], "--set epochs=abc: epochs: Input should be a valid integer"),
        (["batch_size=1000"], "fewer than one batch of 1000"),
        (["data.heldout_size=500"], "held-out size 500 must be between 1 and 163"),
    ],
)
def test_bad_recipes_write_nothing(
    finished: tuple[Path, Path],
    tmp_path: Path,
    overrides: list[str],
    match: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _ = finished
    out = tmp_path / "new"
    sets = [arg for o in overrides for arg in ("--set", o)]
    _fails(["train", "--config", str(config), "--out", str(out), *sets], capsys, match)
    assert not out.exists()


def test_bad_data_and_flags(
    finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = finished
    out = tmp_path / "new"
    base = ["train", "--config", str(config), "--out", str(out)]
    _fails([*base, "--data-root", str(tmp_path / "nowhere")], capsys, "not found in")
    empty = tmp_path / "empty"
    empty.mkdir()
    import numpy as np

    for prefix in ("train", "t10k"):
        write_idx(empty / f"{prefix}-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
        write_idx(empty / f"{prefix}-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    _fails([*base, "--data-root", str(empty)], capsys, "the data set is empty")
    broken = tmp_path / "broken"
    fake_fmnist(broken, n_train=20, n_test=5)
    (broken / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    _fails([*base, "--data-root", str(broken)], capsys, "truncated idx header")
    _fails([*base, "--device", "tpu"], capsys, "--device tpu: expected auto, cpu or cuda")
    _fails(["train", "--out", str(out)], capsys, "--config FILE is required")
    _fails(["train", "--out", str(out), "--resume"], capsys, "recipe file not found")
    _fails(["train", "--config", str(tmp_path / "x.yaml"), "--out", str(out)], capsys,
           "recipe file not found")  # fmt: skip
    (tmp_path / "file").write_text("x")
    _fails(["train", "--config", str(config), "--out", str(tmp_path / "file")], capsys,
           "is not a directory")  # fmt: skip
    assert not out.exists()


def test_overwrite_replaces_the_previous_run(
    finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, out = finished
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    (copy / "calibration.json").write_text("{}")  # made for the old weights
    old_log = (copy / "train_log.jsonl").read_text()
    args = ["train", "--config", str(config), "--out", str(copy), "--overwrite"]
    assert main([*args, "--set", "seed=5", "--set", "weighting=uniform"]) == 0
    assert not (copy / "calibration.json").exists()
    assert (copy / "train_log.jsonl").read_text() != old_log
    assert "weighting: uniform" in (copy / "recipe.yaml").read_text()
    assert "held-out top-1 %" in capsys.readouterr().out
