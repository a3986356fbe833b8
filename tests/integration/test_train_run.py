"""The trainer on fake Fashion-MNIST: steps lower the loss, a run writes a bundle that the rest of
exitwise reads, checkpoints round-trip, reduced precision runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli import main
from exitwise.bundle import load_bundle
from exitwise.datasets import EvalImages, open_dataset
from exitwise.preprocess import FASHION_MNIST, IMAGENET, normalize
from training.build import build_model, has_unused_parameters
from training.checkpoint import (
    CheckpointError,
    Progress,
    load_checkpoint,
    save_checkpoint,
)
from training.config import MetaSpec
from training.data import Normalizer, build_stream, make_split
from training.meta import per_exit_losses
from training.meta_learner import MetaLearner
from training.recipe_io import build_recipe
from training.step import TrainStep
from training.trainer import train
from training.wpn import WeightPredictionNet

from ..training_helpers import (
    fake_fmnist,
    one_thread,  # noqa: F401  (autouse: one thread)
    tiny_model,
    tiny_recipe,
    write_image_folder,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_fmnist(tmp_path_factory.mktemp("fmnist"))


def _step(weighting: str, precision: str = "fp32", channels_last: bool = False) -> TrainStep:
    model = tiny_model()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    meta = None
    if weighting == "l2w":
        wpn = WeightPredictionNet(model.num_exits, "loss", 32, 1)
        meta_opt = torch.optim.Adam(wpn.parameters(), lr=1e-3)
        meta = MetaLearner(wpn, meta_opt, MetaSpec(hidden_size=32), model.num_exits)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype is not None else None
    return TrainStep(
        model,
        model,
        opt,
        meta=meta,
        autocast=autocast,  # type: ignore[arg-type]
        scaler=torch.amp.GradScaler("cpu") if precision == "fp16" else None,
    )


@pytest.mark.parametrize("weighting", ["uniform", "l2w"])
def test_a_few_steps_lower_the_loss(data_root: Path, weighting: str) -> None:
    torch.manual_seed(0)
    recipe = build_recipe(tiny_recipe(data_root), [f"weighting={weighting}"])
    train_set = open_dataset("fashion-mnist", "train", data_root)
    split = make_split(train_set, recipe.data)
    stream = build_stream(train_set, split, recipe.data, batch_size=32, seed=0,
                          device=torch.device("cpu"))  # fmt: skip
    normalize_batch = Normalizer(FASHION_MNIST, torch.device("cpu"), False)
    step = _step(weighting)
    batches = [(normalize_batch(x), y) for x, y in stream.epoch(0)][:3]

    def loss_on_batches() -> float:
        step.module.eval()
        with torch.no_grad():
            total = sum(float(per_exit_losses(step.module(x), y).mean(0).sum()) for x, y in batches)
        step.module.train()
        return total

    before = loss_on_batches()
    stats = [step(x, y, do_meta=True) for _ in range(2) for x, y in batches]
    assert loss_on_batches() < 0.9 * before
    assert stats[-1].losses.shape == (4,)
    if weighting == "l2w":
        assert stats[0].weights is not None and stats[0].weights.shape == (32, 4)
        torch.testing.assert_close(stats[0].weights.mean(1), torch.ones(32))  # col
        assert stats[0].meta_counts is not None and int(stats[0].meta_counts.sum()) == 32
        assert stats[0].meta_loss is not None and torch.isfinite(stats[0].meta_loss)
    else:
        assert stats[0].weights is None and stats[0].meta_loss is None


@pytest.mark.parametrize(("precision", "channels_last"), [("bf16", True), ("fp16", False)])
def test_reduced_precision_step_on_cpu(precision: str, channels_last: bool) -> None:
    torch.manual_seed(0)
    step = _step("l2w", precision, channels_last)
    x = torch.randn(8, 1, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    first = step(x, y, do_meta=True)
    for _ in range(2):
        last = step(x, y, do_meta=True)
    assert torch.isfinite(last.objective) and float(last.objective) < float(first.objective)
    assert all(torch.isfinite(p).all() for p in step.module.parameters())


def test_a_run_writes_a_bundle_the_rest_of_exitwise_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_root = fake_fmnist(tmp_path / "data", n_train=228, n_test=50)
    overrides = ["epochs=2", "log.tensorboard=true", "meta.interval=3", "eval.every_epochs=1"]
    recipe = build_recipe(tiny_recipe(data_root), overrides)
    out = tmp_path / "run"
    result = train(recipe, out)
    for name in ("manifest.json", "weights.safetensors", "heldout_indices.json", "recipe.yaml",
                 "train_log.jsonl", "checkpoints/last.pt"):  # fmt: skip
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    bundle = load_bundle(out)
    bundle.verify()
    m = bundle.manifest
    assert m.preset == "msdnet-fmnist" and m.dataset == "fashion-mnist" and m.name == "run"
    assert m.training.weighting == "l2w" and m.training.epochs == 2 and m.training.seed == 0
    assert m.training.recipe == recipe.to_dict()
    extra = m.training.model_dump()
    assert extra["steps"] == 2 * (128 // 32) and extra["images_per_s"] > 0
    assert extra["test_exit_accuracy"] is not None and len(extra["test_exit_accuracy"]) == 4

    # The held-out accuracy in the manifest is what calibration would measure.
    held = bundle.heldout_indices()
    train_set = open_dataset("fashion-mnist", "train", data_root)
    assert np.array_equal(held, make_split(train_set, recipe.data).heldout)
    view = EvalImages(train_set, FASHION_MNIST, held)
    model = bundle.load_model()
    with torch.no_grad():
        logits = model(
            normalize(torch.stack([view[i][0] for i in range(len(view))]), FASHION_MNIST)
        )
    labels = torch.as_tensor(view.labels)
    acc = [round(100.0 * float((out.argmax(1) == labels).double().mean()), 4) for out in logits]
    assert m.training.heldout_exit_accuracy == pytest.approx(acc, abs=1e-6)
    assert result.heldout_accuracy == m.training.heldout_exit_accuracy

    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert {"loss", "lr", "images_per_s", "weights", "meta_lr", "objective"} <= set(steps[0])
    assert len(steps[0]["loss"]) == 4 and set(steps[0]["weights"]) == {"mean", "std", "min", "max"}
    assert "meta_loss" in steps[0] and "meta_loss" not in steps[1] and "meta_loss" in steps[3]
    evals = [r for r in lines if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2] and evals[-1]["test_accuracy"] is not None

    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [e["heldout_accuracy"] for e in info["exits"]] == m.training.heldout_exit_accuracy


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 32, 32))[0].sum().backward()
    opt.step()
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=model, arch=model.arch, arch_kwargs=model.config_dict,
                    recipe={"a": 1}, progress=Progress(epoch=1, batch=2, step=7),
                    optimizer=opt, wpn=None, meta_optimizer=None, scaler=None)  # fmt: skip
    ck = load_checkpoint(path)
    assert ck.progress.step == 7 and ck.recipe == {"a": 1}
    ck.check_architecture(model.arch, model.config_dict)
    fresh = tiny_model()
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    torch.rand(3)  # move the RNG on: restore must bring back the checkpoint's state
    ck.restore(model=fresh, optimizer=fresh_opt, wpn=None, meta_optimizer=None, scaler=None)
    assert torch.equal(torch.get_rng_state(), ck.payload["rng"]["torch"])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    buf = next(iter(fresh_opt.state.values()))["momentum_buffer"]
    assert torch.equal(buf, next(iter(opt.state.values()))["momentum_buffer"])

    with pytest.raises(CheckpointError, match=r"another architecture.*differs in channels"):
        ck.check_architecture(model.arch, {**model.config_dict, "channels": 6})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an exitwise training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"x": np.arange(3)}, tmp_path / "pickled.pt")  # needs unpickling: refused
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "pickled.pt")


def test_image_folder_run_with_unused_parameters(tmp_path: Path) -> None:
    # An ImageNet-style tree and a tiny ImageNet-stem MSDNet whose finest scale in the last
    # stage feeds no exit (5 layers over 4 scales): unused parameters must not break the run.
    data = write_image_folder(tmp_path / "data", per_class=6)
    kwargs = {"channels": 4, "growth_rate": 2, "num_classes": 2, "step": 1, "base": 1}
    recipe = build_recipe(
        {
            "model": {"preset": "msdnet-imagenet-step4", "kwargs": kwargs},
            "data": {"dataset": "imagenet", "root": str(data), "heldout_size": 4, "workers": 2},
            "epochs": 1,
            "batch_size": 4,
            "device": "cpu",
            "meta": {"hidden_size": 8},
            "log": {"tensorboard": False, "progress": "none"},
        }
    )
    module = build_model(recipe, IMAGENET, ["a", "b"])
    assert has_unused_parameters(module, IMAGENET, torch.device("cpu"))
    assert not has_unused_parameters(tiny_model(), FASHION_MNIST, torch.device("cpu"))
    result = train(recipe, tmp_path / "run")
    assert len(result.heldout_accuracy) == 5 and result.test_accuracy is not None
    bundle = load_bundle(tmp_path / "run")
    assert bundle.manifest.dataset == "imagenet" and bundle.manifest.class_names == ["n00", "n01"]
    assert bundle.manifest.preprocessing == IMAGENET
