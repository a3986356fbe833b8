"""`exitwise train` on a folder of images: what it reports, the held-out split, bad data refused
in one line before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from cli import main
from training.config import DataSpec
from training.recipe_io import build_recipe

from ..folder_helpers import truncate, write_folder
from ..helpers import TINY_KWARGS
from ..training_helpers import one_thread  # noqa: F401  (autouse: one thread)


def _recipe(data: Path, **data_keys: Any) -> dict[str, Any]:
    return {
        "model": {"preset": "msdnet-fmnist", "kwargs": dict(TINY_KWARGS)},
        "data": {"dataset": "folder", "root": str(data), "image_size": 16, "heldout_min": 10,
                 "workers": 0, **data_keys},
        "weighting": "uniform",
        "epochs": 1,
        "batch_size": 16,
        "device": "cpu",
        "eval": {"test": False},
        "log": {"tensorboard": False, "progress": "none"},
    }  # fmt: skip


def _train(tmp: Path, recipe: dict[str, Any], out: str = "run", *sets: str) -> int:
    config = tmp / f"{out}.yaml"
    config.write_text(yaml.safe_dump(recipe))
    args = ["train", "--config", str(config), "--out", str(tmp / out)]
    for item in sets:
        args += ["--set", item]
    return main(args)


def test_a_run_reports_the_data_and_keeps_the_held_out_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_folder(tmp_path / "data", per_class=20, bad_files=True)
    shutil.rmtree(data / "train" / "dress")  # 3 classes
    for path in sorted((data / "train" / "coat").glob("coat-*"))[4:]:
        path.unlink()  # 'coat' keeps 4 images, the others 20
    Image.new("RGB", (300, 140), (90, 90, 90)).save(data / "train" / "bag" / "large.jpg")
    Image.new("RGB", (20, 20)).save(data / "train" / "loose.png")  # in no class folder
    assert _train(tmp_path, _recipe(data), "a") == 0
    err = capsys.readouterr().err
    assert "3 classes" in err and "warning: classes are imbalanced" in err
    assert "skipped 2 unreadable file(s): train/bag/empty.png (not an image PIL can read)" in err
    assert "ignored 2 file(s) outside class folders or without an image extension" in err
    assert "warning: held-out split of 10 images" in err  # and how many it would take
    # The 0.1 share of a few dozen images is raised to heldout_min, and the run says so.
    assert "held-out split: 10 of the " in err and "raised to data.heldout_min = 10" in err
    assert (
        "1 image(s) are more than 8x the 16-pixel crop on their shorter side (largest 300x140)"
        in err
    )
    first = json.loads((tmp_path / "a" / "heldout_indices.json").read_text())
    # Another model seed, the same split_seed: the same held-out images.
    assert _train(tmp_path, _recipe(data), "b", "seed=5") == 0
    assert json.loads((tmp_path / "b" / "heldout_indices.json").read_text()) == first
    assert _train(tmp_path, _recipe(data), "c", "data.split_seed=1") == 0
    assert json.loads((tmp_path / "c" / "heldout_indices.json").read_text()) != first


def test_resume_refuses_a_folder_that_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_folder(tmp_path / "data", per_class=10)
    assert _train(tmp_path, _recipe(data), "run") == 0
    capsys.readouterr()
    resume = ["train", "--out", str(tmp_path / "run"), "--resume", "--set", "epochs=2"]
    shutil.copy(next((data / "train" / "bag").glob("*.png")), data / "train" / "bag" / "new.png")
    assert main(resume) == 1
    err = capsys.readouterr().err.strip()
    assert "images changed since this checkpoint" in err and "restore the folder" in err
    assert len(err.splitlines()) == 1
    (data / "train" / "bag" / "new.png").unlink()
    assert main(resume) == 0  # the same images again: the run goes on


def test_held_out_size_is_a_fraction_with_a_floor_and_a_cap() -> None:
    spec = DataSpec(dataset="folder", root="x")
    assert [spec.heldout_count(n) for n in (150, 1000, 3000, 80000)] == [75, 100, 300, 5000]
    assert DataSpec(dataset="folder", root="x", heldout_size=7).heldout_count(1000) == 7
    assert DataSpec(dataset="cifar10").heldout_count(50000) == 5000  # named sets: as before
    assert DataSpec(dataset="cifar10", heldout_fraction=0.2).heldout_count(50000) == 5000  # cap


def test_the_held_out_rule_says_when_it_changes_the_size_asked_for() -> None:
    spec = DataSpec(dataset="folder", root="x")
    assert spec.heldout_rule_note(2692) is None  # 269: the 0.1 share as asked
    assert spec.heldout_rule_note(300) == (
        "held-out split: 100 of the 300 training images (33%), not the 30 that "
        "data.heldout_fraction 0.1 (the default) asks for: raised to data.heldout_min = 100 so "
        "that calibration has enough; 200 are left to train on (data.heldout_size sets the number)"
    )
    small = spec.heldout_rule_note(150)
    assert small is not None and small.startswith("held-out split: 75 of the 150 training images")
    assert (
        "raised to data.heldout_min = 100 so that calibration has enough, then capped at " in small
    )
    big = DataSpec(dataset="folder", root="x", heldout_fraction=0.2).heldout_rule_note(80000)
    assert big is not None and "not the 16000 that data.heldout_fraction 0.2 asks for: " in big
    assert "capped at data.heldout_max = 5000; 75000 are left" in big
    assert DataSpec(dataset="folder", root="x", heldout_size=7).heldout_rule_note(100) is None
    assert DataSpec(dataset="cifar10").heldout_rule_note(50000) is None  # a fixed 5,000


def test_the_image_size_is_the_folders_unless_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_folder(tmp_path / "data", per_class=8)  # shorter sides 36, 36, 44
    recipe = _recipe(data, image_size="auto")
    assert _train(tmp_path, recipe, "auto") == 0
    err = capsys.readouterr().err
    assert "image size 32 (data.image_size auto: the median shorter side of the " in err
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["preprocessing"]["input_size"] == 32 == manifest["preprocessing"]["crop"]
    saved = yaml.safe_load((tmp_path / "auto" / "recipe.yaml").read_text())
    assert saved["data"]["image_size"] == "auto"  # what was asked; the bundle has the number
    # A number is used as given, and nothing is said about it.
    assert _train(tmp_path, recipe, "fixed", "data.image_size=24") == 0
    assert "data.image_size auto" not in capsys.readouterr().err
    manifest = json.loads((tmp_path / "fixed" / "manifest.json").read_text())
    assert manifest["preprocessing"]["input_size"] == 24


def _refused(tmp: Path, capsys: pytest.CaptureFixture[str], recipe: dict[str, Any],
             match: str, *sets: str) -> None:  # fmt: skip
    assert _train(tmp, recipe, "bad", *sets) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err, err
    assert len(err.splitlines()) == 1, err
    assert not (tmp / "bad").exists()  # nothing written


def test_bad_data_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = write_folder(tmp_path / "one", per_class=6, classes=["cat"])
    _refused(tmp_path, capsys, _recipe(one), "one class only ('cat')")

    empty = write_folder(tmp_path / "empty", per_class=6)
    (empty / "train" / "zebra").mkdir()
    _refused(tmp_path, capsys, _recipe(empty), "empty class folder train/zebra")

    mixed = write_folder(tmp_path / "mixed", per_class=6, val_per_class=2)
    (mixed / "val" / "zebra").mkdir()
    _refused(tmp_path, capsys, _recipe(mixed), "only in val/: zebra")

    damaged = write_folder(tmp_path / "damaged", per_class=6)
    broken = truncate(next((damaged / "train" / "coat").glob("*.jpg")))
    _refused(tmp_path, capsys, _recipe(damaged), f"{broken}: cannot decode image")

    fine = write_folder(tmp_path / "fine", per_class=6)
    _refused(tmp_path, capsys, _recipe(fine, max_memory_gb=1e-6), "over data.max_memory_gb")
    _refused(tmp_path, capsys, _recipe(fine), "data: a folder data set needs data.root",
             "data.root=null")  # fmt: skip
    _refused(tmp_path, capsys, _recipe(fine), "is built for 32-pixel inputs; folder gives 16",
             "model.kwargs.input_size=32")  # fmt: skip
    _refused(tmp_path, capsys, _recipe(fine), "mean needs 3 value(s)", "data.mean=[0.5]",
             "data.std=[0.2]")  # fmt: skip
    named = build_recipe(_recipe(fine)).to_dict()
    named["data"] = {"dataset": "fashion-mnist", "image_size": 64}
    _refused(tmp_path, capsys, named, "image_size applies to folder data sets")
