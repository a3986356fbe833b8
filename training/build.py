"""Everything a run is made of, built and checked before any file is written.

Order matters for the promise "bad input: one line, nothing overwritten": the output directory,
the recipe, the data sets, the model and a checkpoint to resume are all checked here, and only
then does :mod:`training.trainer` touch the output directory.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exitwise.bundle import CALIBRATION_FILE, HELDOUT_FILE, MANIFEST_FILE, WEIGHTS_FILE
from exitwise.datasets import (
    FOLDER,
    FolderSource,
    ImageDataset,
    default_preprocessing,
    open_dataset,
)
from exitwise.errors import ExitwiseError
from exitwise.models import EarlyExitNet, apply_init, create_model, get_preset, is_preset
from exitwise.preprocess import Preprocessing

from .checkpoint import CHECKPOINT_DIR, Checkpoint, Progress, checkpoint_path, load_checkpoint
from .config import Recipe, RecipeError
from .data import Split, TrainStream, build_stream, make_split
from .distributed import DistContext
from .folder_data import FolderData, folder_preprocessing, heldout_note, open_folder
from .logs import LOG_FILE, TENSORBOARD_DIR
from .meta_learner import MetaLearner
from .recipe_io import check_resume_compatible
from .schedule import Schedule
from .step import TrainStep

RECIPE_FILE = "recipe.yaml"
# What a training run writes into its output directory.
RUN_FILES = (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    HELDOUT_FILE,
    RECIPE_FILE,
    LOG_FILE,
    CHECKPOINT_DIR,
    TENSORBOARD_DIR,
)

AutocastFactory = Callable[[], contextlib.AbstractContextManager[object]]


class OutputDirError(ExitwiseError):
    """An output directory that would lose something if the run went ahead."""


def check_output(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise OutputDirError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out}: exists and is not a directory")
    if resume:
        if not checkpoint_path(out).is_file():
            raise OutputDirError(f"{checkpoint_path(out)}: no checkpoint to resume from")
        return
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise OutputDirError(
            f"{out} already holds a training run ({', '.join(existing)}); pass --resume to "
            "continue it or --overwrite to replace it"
        )


def clear_previous_run(out: Path) -> None:
    """``--overwrite``: remove the previous run's files (manifest first: no half bundle)."""
    import shutil

    for name in (MANIFEST_FILE, CALIBRATION_FILE, *RUN_FILES):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_autocast(device: torch.device, precision: str) -> AutocastFactory:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    def factory() -> contextlib.AbstractContextManager[object]:
        return torch.autocast(device_type=device.type, dtype=dtype)

    return factory


def _folder_kwargs(name: str, preprocessing: Preprocessing, classes: int) -> dict[str, Any]:
    """A folder data set sizes the network: its classes, channels and image size (the recipe's
    model.kwargs still win)."""
    kwargs: dict[str, Any] = {"num_classes": classes, "in_channels": preprocessing.channels}
    if not is_preset(name) or get_preset(name).input_size != preprocessing.input_size:
        kwargs["input_size"] = preprocessing.input_size
    return kwargs


def build_model(
    recipe: Recipe, preprocessing: Preprocessing, class_names: list[str]
) -> EarlyExitNet:
    name = recipe.model.preset
    kwargs = dict(recipe.model.kwargs)
    if recipe.data.dataset == FOLDER:
        kwargs = {**_folder_kwargs(name, preprocessing, len(class_names)), **kwargs}
    try:
        model = create_model(name, **kwargs)
        apply_init(model, recipe.model.init)
    except ExitwiseError:
        raise
    except (TypeError, ValueError, KeyError) as err:
        raise RecipeError(f"model {name!r} with kwargs {recipe.model.kwargs}: {err}") from err
    cfg = model.config_dict
    channels = int(cfg.get("in_channels", 3))
    if channels != preprocessing.channels:
        raise RecipeError(
            f"model {name!r} takes {channels}-channel images; {recipe.data.dataset} has "
            f"{preprocessing.channels} (set model.kwargs.in_channels or pick another preset)"
        )
    classes = int(cfg.get("num_classes", 0))
    if classes != len(class_names):
        raise RecipeError(
            f"model {name!r} has {classes} classes; {recipe.data.dataset} has "
            f"{len(class_names)} (set model.kwargs.num_classes or pick another preset)"
        )
    size = kwargs.get("input_size") or (get_preset(name).input_size if is_preset(name) else None)
    if size is not None and size != preprocessing.input_size:
        raise RecipeError(
            f"model {name!r} is built for {size}-pixel inputs; "
            f"{recipe.data.dataset} gives {preprocessing.input_size}"
        )
    return model


def has_unused_parameters(
    module: EarlyExitNet, preprocessing: Preprocessing, device: torch.device
) -> bool:
    """Whether some parameter feeds no exit (DDP must then be told to look for them)."""
    size, channels = preprocessing.input_size, preprocessing.channels
    x = torch.zeros(2, channels, size, size, device=device)
    was_training = module.training
    module.eval()  # no BN statistics are updated by this probe
    try:
        out = module(x)
        params = [p for p in module.parameters() if p.requires_grad]
        grads = torch.autograd.grad(sum(o.sum() for o in out), params, allow_unused=True)
    finally:
        module.train(was_training)
    return any(g is None for g in grads)


@dataclass
class Run:
    recipe: Recipe
    out: Path
    ctx: DistContext
    device: torch.device
    train_set: ImageDataset
    test_set: ImageDataset | None
    split: Split
    preprocessing: Preprocessing
    module: EarlyExitNet
    model: nn.Module  # module, or module wrapped in DDP
    meta: MetaLearner | None  # None: uniform weighting
    optimizer: torch.optim.SGD
    scaler: torch.amp.GradScaler | None
    schedule: Schedule
    stream: TrainStream
    step: TrainStep
    progress: Progress = field(default_factory=Progress)
    checkpoint: Checkpoint | None = None
    changed: list[str] = field(default_factory=list)  # recipe keys changed since the checkpoint
    folder: FolderSource | None = None  # a folder data set: where it is, how it was split
    notes: list[str] = field(default_factory=list)  # about the data, said before training


def build_run(
    recipe: Recipe,
    out: Path,
    *,
    ctx: DistContext,
    device: torch.device,
    resume: bool,
    overwrite: bool,
) -> Run:
    check_output(out, resume=resume, overwrite=overwrite)
    ckpt = load_checkpoint(checkpoint_path(out)) if resume else None
    changed: list[str] = []
    if ckpt is not None:
        changed = check_resume_compatible(ckpt.recipe, recipe, str(ckpt.path))
    if recipe.batch_size % (2 * ctx.world):
        raise RecipeError(
            f"batch_size {recipe.batch_size} must split into two halves on each of "
            f"{ctx.world} processes (a multiple of {2 * ctx.world})"
        )

    seed_everything(recipe.seed)
    data = recipe.data
    folder: FolderData | None = None
    train_set: ImageDataset
    test_set: ImageDataset | None
    if data.dataset == FOLDER:
        folder = open_folder(data, with_test=recipe.eval.test, preset=recipe.model.preset)
        train_set, test_set = folder.train, folder.test
    else:
        train_set = open_dataset(data.dataset, "train", data.root)
        test_set = open_dataset(data.dataset, "test", data.root) if recipe.eval.test else None
    split = make_split(train_set, data)
    if folder is not None:
        if ckpt is not None:
            ckpt.check_folder(folder.source.model_dump())
        preprocessing = folder_preprocessing(data, folder.geometry, folder.train, split.train)
    else:
        preprocessing = default_preprocessing(data.dataset, data.channels)
    module = build_model(recipe, preprocessing, train_set.class_names).to(device)
    notes = list(folder.notes) if folder is not None else []
    rule = data.heldout_rule_note(len(train_set))  # the held-out rule changed the size asked for
    small = heldout_note(len(split.heldout), module.num_exits)
    notes += [note for note in (rule, small) if note]
    if ckpt is not None:
        ckpt.check_architecture(module.arch, module.config_dict)
    if recipe.channels_last:
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    meta = None
    if recipe.weighting == "l2w":  # after the model: the WPN draws from the RNG next
        meta = MetaLearner.create(recipe.meta, module.num_exits, device)
    optim = recipe.optim
    optimizer = torch.optim.SGD(
        module.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type) if recipe.precision == "fp16" else None

    progress = Progress()
    if ckpt is not None:
        ckpt.restore(
            model=module,
            optimizer=optimizer,
            wpn=meta.wpn if meta is not None else None,
            meta_optimizer=meta.optimizer if meta is not None else None,
            scaler=scaler,
        )
        progress = ckpt.progress
        progress.finished = progress.finished and progress.epoch >= recipe.epochs

    stream = build_stream(
        train_set,
        split,
        data,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        device=device,
        rank=ctx.rank,
        world=ctx.world,
        preprocessing=preprocessing,
    )
    if stream.num_batches == 0:
        raise ExitwiseError("no complete training batch: lower batch_size or train on more images")

    model: nn.Module = module
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel

        from .distributed import broadcast_module

        model = DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=has_unused_parameters(module, preprocessing, device),
        )
        if meta is not None:
            broadcast_module(meta.wpn, ctx)

    autocast = make_autocast(device, recipe.precision)
    step = TrainStep(
        model,
        module,
        optimizer,
        meta=meta,
        label_smoothing=optim.label_smoothing,
        autocast=autocast,
        scaler=scaler,
    )
    return Run(
        recipe=recipe,
        out=out,
        ctx=ctx,
        device=device,
        train_set=train_set,
        test_set=test_set,
        split=split,
        preprocessing=preprocessing,
        module=module,
        model=model,
        meta=meta,
        optimizer=optimizer,
        scaler=scaler,
        schedule=Schedule(optim, stream.num_batches, recipe.epochs),
        stream=stream,
        step=step,
        progress=progress,
        checkpoint=ckpt,
        changed=changed,
        folder=folder.source if folder is not None else None,
        notes=notes,
    )
