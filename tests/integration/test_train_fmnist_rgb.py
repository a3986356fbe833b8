"""A CIFAR architecture on Fashion-MNIST read as 3 channels: train writes a bundle whose
preprocessing carries the replication, and evaluation and calibration reproduce
training's held-out outputs from it (about 5 s: tiny network, 228 fake images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from cli import main
from exitwise.bundle import load_bundle
from exitwise.datasets import EvalImages, default_preprocessing, open_dataset
from exitwise.preprocess import normalize
from training.config import RecipeError
from training.recipe_io import build_recipe
from training.trainer import train

from ..helpers import TINY_KWARGS
from ..training_helpers import (
    fake_fmnist,
    one_thread,  # noqa: F401  (autouse: one thread)
    tiny_recipe,
)


def _rgb_recipe(data_root: Path) -> dict[str, object]:
    recipe = tiny_recipe(data_root)
    recipe["model"] = {"preset": "msdnet-cifar10", "kwargs": dict(TINY_KWARGS)}
    return recipe


def test_cifar_preset_trains_and_calibrates_on_rgb_fashion_mnist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_root = fake_fmnist(tmp_path / "data", n_train=228, n_test=50)
    # Without data.channels the 3-channel preset is refused, in one line.
    with pytest.raises(RecipeError, match="takes 3-channel images; fashion-mnist has 1"):
        train(build_recipe(_rgb_recipe(data_root)), tmp_path / "refused")
    recipe = build_recipe(_rgb_recipe(data_root), ["data.channels=3", "weighting=uniform"])
    out = tmp_path / "run"
    result = train(recipe, out)
    m = load_bundle(out).manifest
    rgb = default_preprocessing("fashion-mnist", 3)
    assert m.preprocessing == rgb and m.dataset == "fashion-mnist"
    assert m.preset == "msdnet-cifar10" and len(m.exit_mflops) == 5

    # The held-out accuracy training wrote is what the bundle's own preprocessing reproduces.
    bundle = load_bundle(out)
    view = EvalImages(
        open_dataset("fashion-mnist", "train", data_root), m.preprocessing, bundle.heldout_indices()
    )
    model = bundle.load_model()
    with torch.no_grad():
        x = normalize(torch.stack([view[i][0] for i in range(len(view))]), m.preprocessing)
        logits = model(x)
    labels = torch.as_tensor(view.labels)
    acc = [round(100.0 * float((o.argmax(1) == labels).double().mean()), 4) for o in logits]
    assert result.heldout_accuracy == pytest.approx(acc, abs=1e-6)

    # Calibration reads the grey files into the bundle's 3-channel geometry.
    capsys.readouterr()
    assert main(["calibrate", str(out), "--data-root", str(data_root), "--fractions", "0.5"]) == 0
    cal = json.loads((out / "calibration.json").read_text())
    assert [e["heldout_top1"] for e in cal["anytime"]] == pytest.approx(acc, abs=1e-6)
    (cache,) = (out / "calibration" / "cache").glob("heldout-*.safetensors")
    scores = load_file(cache)  # the max-softmax confidences calibration computed, per exit
    ours = torch.stack([o.double().softmax(1).max(1).values for o in logits], 1).numpy()
    np.testing.assert_allclose(scores["confidence"], ours, rtol=1e-5, atol=1e-6)
