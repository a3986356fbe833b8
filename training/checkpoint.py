"""Checkpoints: everything a run needs to continue bit for bit, written atomically, no pickle.

A checkpoint is one ``torch.save`` file holding only tensors and plain values (dicts, lists,
strings, numbers), read back with ``torch.load(..., weights_only=True)``: the model, the WPN,
both optimizers (momentum buffers, Adam moments), the fp16 loss scaler, the schedule's position,
the RNG states (torch, CUDA, numpy, python), the data position (epoch, batch; the data order and
augmentation are pure functions of the seed and that position), the recipe and the architecture.
``checkpoints/last.pt`` is replaced atomically at every epoch end and every
``checkpoint.every_steps`` iterations.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import numpy as np
import torch
from torch import nn

from exitwise.errors import ExitwiseError
from exitwise.fileio import atomic_path

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
FORMAT = "exitwise-train-checkpoint"
VERSION = 1


class CheckpointError(ExitwiseError):
    """A checkpoint that is missing, unreadable, or does not fit the run resuming it."""


@dataclass
class Progress:
    epoch: int = 0  # the epoch in progress (0-based); equals the epochs done at an epoch end
    batch: int = 0  # loader batches done within that epoch
    step: int = 0  # loader batches done over the whole run (the schedule's position)
    images: int = 0  # training images seen (global)
    train_seconds: float = 0.0  # time spent training (evaluation excluded)
    finished: bool = False


def checkpoint_path(out: Path) -> Path:
    return out / CHECKPOINT_DIR / LAST


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "state": list(py_state), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    arch: str,
    arch_kwargs: dict[str, Any],
    recipe: dict[str, Any],
    progress: Progress,
    optimizer: torch.optim.Optimizer,
    wpn: nn.Module | None,
    meta_optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    folder: dict[str, Any] | None = None,
) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": json.dumps(arch_kwargs, sort_keys=True),
        "recipe": json.dumps(recipe),
        "progress": asdict(progress),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "wpn": {k: v.detach().cpu() for k, v in wpn.state_dict().items()} if wpn else {},
        "meta_optimizer": meta_optimizer.state_dict() if meta_optimizer else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng_state(),
    }
    if folder is not None:  # a folder data set's record: a resume must find the same images
        payload["folder"] = json.dumps(folder, sort_keys=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


@dataclass
class Checkpoint:
    path: Path
    payload: dict[str, Any]

    @property
    def arch(self) -> str:
        return str(self.payload["arch"])

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.payload["arch_kwargs"])
        return out

    @property
    def recipe(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.payload["recipe"])
        return out

    @property
    def progress(self) -> Progress:
        return Progress(**self.payload["progress"])

    def check_folder(self, folder: dict[str, Any]) -> None:
        """Refuse to resume on a folder whose images changed since the checkpoint (their
        held-out split would differ); checkpoints of other data sets have no record."""
        saved = json.loads(self.payload.get("folder") or "null")
        if saved is None:
            return
        for split in ("train", "test"):
            if saved[f"{split}_sha256"] != folder[f"{split}_sha256"]:
                raise CheckpointError(
                    f"{self.path}: the folder's {split} images changed since this checkpoint "
                    f"({folder[f'{split}_images']} now, {saved[f'{split}_images']} then, or files "
                    "renamed or changed); restore the folder, or start a new run (--overwrite)"
                )

    def check_architecture(self, arch: str, arch_kwargs: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint of another architecture (one line)."""
        norm = json.loads(json.dumps(arch_kwargs, sort_keys=True))
        if arch != self.arch or norm != self.arch_kwargs:
            diff = sorted(
                k
                for k in set(norm) | set(self.arch_kwargs)
                if norm.get(k) != self.arch_kwargs.get(k)
            )
            detail = f" (differs in {', '.join(diff)})" if diff and arch == self.arch else ""
            raise CheckpointError(
                f"{self.path}: a checkpoint of another architecture: {self.arch}{detail}; "
                f"the recipe builds {arch}"
            )

    def restore(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        wpn: nn.Module | None,
        meta_optimizer: torch.optim.Optimizer | None,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        p = self.payload
        try:
            model.load_state_dict(p["model"], strict=True)
            optimizer.load_state_dict(p["optimizer"])
            if wpn is not None:
                if not p["wpn"]:
                    raise CheckpointError(f"{self.path}: holds no weight-prediction network")
                wpn.load_state_dict(p["wpn"], strict=True)
                if meta_optimizer is not None:
                    meta_optimizer.load_state_dict(p["meta_optimizer"])
            if scaler is not None and p["scaler"]:
                scaler.load_state_dict(p["scaler"])
        except (RuntimeError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{self.path}: does not fit this run: {first}") from err
        set_rng_state(p["rng"])


def load_checkpoint(path: Path) -> Checkpoint:
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({first[:200]})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an exitwise training checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')!r}; this exitwise reads {VERSION}"
        )
    return Checkpoint(path=path, payload=payload)
