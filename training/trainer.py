"""The training run: epochs of iterations, checkpoints, evaluation, and the bundle at the end.

``train(recipe, out)`` is the whole of ``exitwise train``: it builds the run (checking every
input before writing anything), trains, checkpoints at every epoch end (and every
``checkpoint.every_steps`` iterations), measures per-exit accuracy on the held-out split (and the
test split) through the evaluation path calibration and serving use, and writes the bundle:
``weights.safetensors``, ``manifest.json`` (with the training summary) and
``heldout_indices.json``, next to ``recipe.yaml``, ``train_log.jsonl``, ``tensorboard/`` and
``checkpoints/``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exitwise.bundle import Bundle, load_bundle, save_bundle
from exitwise.fileio import atomic_write_text
from exitwise.models import is_preset

from .build import RECIPE_FILE, Run, build_run, clear_previous_run
from .checkpoint import Progress, checkpoint_path, save_checkpoint
from .config import Recipe
from .data import Normalizer, eval_view
from .distributed import (
    barrier,
    check_replicas,
    destroy_process_group,
    env_context,
    init_process_group,
    resolve_device,
)
from .evaluate import exit_accuracy
from .logs import Reporter, RunLog
from .step import StepStats


@dataclass
class TrainResult:
    out: Path
    bundle: Bundle | None  # None on ranks other than 0
    heldout_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    already_finished: bool = False


def train(
    recipe: Recipe,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``recipe`` into the output directory ``out`` (see the module docstring)."""
    ctx = env_context()
    device = resolve_device(recipe.device, ctx)
    init_process_group(ctx, device)
    try:
        return _train(recipe, Path(out), ctx_device=(ctx, device), resume=resume,
                      overwrite=overwrite, echo=echo)  # fmt: skip
    finally:
        destroy_process_group()


def _train(
    recipe: Recipe,
    out: Path,
    *,
    ctx_device: tuple[Any, torch.device],
    resume: bool,
    overwrite: bool,
    echo: Callable[[str], None] | None,
) -> TrainResult:
    ctx, device = ctx_device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not recipe.deterministic
    elif recipe.cpu_threads is not None:
        torch.set_num_threads(recipe.cpu_threads)
    if recipe.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    run = build_run(recipe, out, ctx=ctx, device=device, resume=resume, overwrite=overwrite)
    barrier(ctx)  # every process has checked the output directory before rank 0 writes to it
    say = echo if (echo is not None and ctx.is_main) else (lambda _text: None)
    prog = run.progress
    if prog.epoch >= recipe.epochs and (out / "manifest.json").exists():
        say(f"{out}: training already finished ({prog.epoch} epochs); nothing to do")
        bundle = load_bundle(out) if ctx.is_main else None
        return TrainResult(out, bundle, already_finished=True)

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            clear_previous_run(out)
        for stale in (out / "checkpoints").glob(".*.tmp"):  # a write cut short by a kill
            stale.unlink()
        atomic_write_text(out / RECIPE_FILE, recipe.to_yaml())
    if run.checkpoint is not None:
        say(f"resuming {out} at epoch {prog.epoch + 1}, batch {prog.batch} (iteration {prog.step})")
    if run.changed:
        say(f"resuming with changed recipe keys: {', '.join(run.changed)}")
    for note in run.notes:
        say(note)
    log = RunLog(
        out,
        enabled=ctx.is_main,
        tensorboard=recipe.log.tensorboard,
        resume_step=prog.step if run.checkpoint is not None else None,
    )
    reporter = Reporter(
        recipe.log.progress,
        ctx.is_main,
        recipe.epochs,
        run.stream.num_batches,
        recipe.log.print_every_s,
    )
    started = time.perf_counter()
    try:
        _epochs(run, log, reporter)
        result = _finish(run, log, reporter, time.perf_counter() - started)
    finally:
        reporter.end_epoch()
        log.close()
    return result


def _epochs(run: Run, log: RunLog, reporter: Reporter) -> None:
    recipe, prog = run.recipe, run.progress
    normalize = Normalizer(run.preprocessing, run.device, recipe.channels_last)
    every = recipe.checkpoint.every_steps
    for epoch in range(prog.epoch, recipe.epochs):
        start = prog.batch if epoch == prog.epoch else 0
        reporter.start_epoch(epoch, start)
        clock = _Clock(prog)
        for b, (pixels, labels) in enumerate(run.stream.epoch(epoch, start), start=start):
            lr = run.schedule.lr(prog.step)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            meta, meta_lr = run.meta, None
            if meta is not None:
                meta_lr = meta.set_lr(prog.step, run.schedule.total)
            do_meta = meta is not None and meta.due(prog.step)
            stats = run.step(normalize(pixels), labels, do_meta)
            prog.step += 1
            prog.batch = b + 1
            prog.images += recipe.batch_size
            clock.images += recipe.batch_size
            last = prog.batch == run.stream.num_batches
            summary = None
            if prog.step % recipe.log.every_steps == 0 or last:
                summary = _log_step(log, stats, prog, epoch, lr, meta_lr, clock.rate())
                summary += f", {clock.epoch_rate():.0f} img/s"  # steadier than one iteration's
            reporter.update(prog.batch, summary)
            if every and prog.step % every == 0 and not last:
                clock.pause(functools.partial(_save, run, clock))
        prog.epoch, prog.batch = epoch + 1, 0
        reporter.end_epoch()
        _save(run, clock)
        every_eval = recipe.eval.every_epochs
        # The last epoch is evaluated by _finish.
        if every_eval and prog.epoch % every_eval == 0 and prog.epoch < recipe.epochs:
            acc = _heldout(run)
            log.record(
                {"kind": "eval", "step": prog.step, "epoch": prog.epoch, "heldout_accuracy": acc}
            )
            log.scalars(prog.step, {f"heldout/acc_exit{k + 1}": a for k, a in enumerate(acc)})
            reporter.message(f"epoch {prog.epoch}: held-out top-1 % per exit {acc}")


class _Clock:
    """Training time of the current epoch (checkpoint writes excluded), added to ``progress``."""

    def __init__(self, prog: Progress) -> None:
        self.prog = prog
        self.base = prog.train_seconds
        self.t0 = time.perf_counter()
        self.excluded = 0.0
        self.window_t = self.t0
        self.images = 0  # since the last rate() call
        self.epoch_images = 0

    def sync(self) -> None:
        self.prog.train_seconds = self.base + time.perf_counter() - self.t0 - self.excluded

    def pause(self, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        fn()
        self.excluded += time.perf_counter() - t

    def rate(self) -> float:
        """Images per second since the previous call (data loading included)."""
        now = time.perf_counter()
        rate = self.images / max(now - self.window_t, 1e-9)
        self.window_t, self.epoch_images, self.images = now, self.epoch_images + self.images, 0
        return rate

    def epoch_rate(self) -> float:
        """Images per second over this epoch so far (checkpoint writes excluded)."""
        elapsed = time.perf_counter() - self.t0 - self.excluded
        return (self.epoch_images + self.images) / max(elapsed, 1e-9)


def _save(run: Run, clock: _Clock | None) -> None:
    if clock is not None:
        clock.sync()
    if not run.ctx.is_main:
        return
    meta = run.meta
    save_checkpoint(
        checkpoint_path(run.out),
        model=run.module,
        arch=run.module.arch,
        arch_kwargs=run.module.config_dict,
        recipe=run.recipe.to_dict(),
        progress=run.progress,
        optimizer=run.optimizer,
        wpn=meta.wpn if meta is not None else None,
        meta_optimizer=meta.optimizer if meta is not None else None,
        scaler=run.scaler,
        folder=run.folder.model_dump() if run.folder is not None else None,
    )


def _log_step(
    log: RunLog,
    stats: StepStats,
    prog: Progress,
    epoch: int,
    lr: float,
    meta_lr: float | None,
    rate: float,
) -> str:
    losses = [round(v, 6) for v in stats.losses.tolist()]
    objective = float(stats.objective)
    rec: dict[str, Any] = {
        "kind": "step",
        "step": prog.step,
        "epoch": epoch + 1,
        "batch": prog.batch,
        "lr": lr,
        "loss": losses,
        "objective": objective,
        "images_per_s": round(rate, 2),
    }
    scalars = {"train/lr": lr, "train/objective": objective, "train/images_per_s": rate}
    scalars.update({f"train/loss_exit{k + 1}": v for k, v in enumerate(losses)})
    if meta_lr is not None:
        rec["meta_lr"] = meta_lr
        scalars["train/meta_lr"] = meta_lr
    if stats.weights is not None:
        w = stats.weights.float()
        rec["weights"] = {
            "mean": w.mean(0).tolist(),
            "std": w.std(0).tolist() if w.shape[0] > 1 else [0.0] * w.shape[1],
            "min": w.amin(0).tolist(),
            "max": w.amax(0).tolist(),
        }
        scalars.update(
            {f"weights/mean_exit{k + 1}": v for k, v in enumerate(rec["weights"]["mean"])}
        )
    if stats.meta_loss is not None:
        rec["meta_loss"] = float(stats.meta_loss)
        scalars["train/meta_loss"] = rec["meta_loss"]
        if stats.meta_counts is not None:
            rec["meta_counts"] = stats.meta_counts.tolist()
    if stats.meta_skipped:
        rec["meta_skipped"] = stats.meta_skipped
    log.record(rec)
    log.scalars(prog.step, scalars)
    exits = " ".join(f"{v:.3f}" for v in losses)
    return f"loss {objective:.4f} [{exits}] lr {lr:.4g}"


def _heldout(run: Run) -> list[float]:
    view = eval_view(run.train_set, run.split.heldout, run.recipe.data.dataset, run.preprocessing)
    return exit_accuracy(run.module, view, run.device, batch_size=run.recipe.eval.batch_size,
                         workers=_eval_workers(run), ctx=run.ctx)  # fmt: skip


def _eval_workers(run: Run) -> int:
    # Decoding image folders is the slow part of their evaluation; arrays need no workers.
    return run.recipe.data.workers if not hasattr(run.train_set, "images") else 0


def _finish(run: Run, log: RunLog, reporter: Reporter, wall: float) -> TrainResult:
    recipe, prog = run.recipe, run.progress
    if not prog.finished:
        prog.finished = True
        _save(run, None)
    check_replicas([run.module] + ([run.meta.wpn] if run.meta is not None else []), run.ctx)
    reporter.message("evaluating per-exit accuracy on the held-out split")
    heldout = _heldout(run)
    test = None
    if run.test_set is not None:
        view = eval_view(run.test_set, None, recipe.data.dataset, run.preprocessing)
        test = exit_accuracy(run.module, view, run.device, batch_size=recipe.eval.batch_size,
                             workers=_eval_workers(run), ctx=run.ctx)  # fmt: skip
    log.record({"kind": "eval", "step": prog.step, "epoch": prog.epoch,
                "heldout_accuracy": heldout, "test_accuracy": test})  # fmt: skip
    scalars = {f"heldout/acc_exit{k + 1}": a for k, a in enumerate(heldout)}
    scalars.update({f"test/acc_exit{k + 1}": a for k, a in enumerate(test or [])})
    log.scalars(prog.step, scalars)
    summary: dict[str, Any] = {
        "weighting": recipe.weighting,
        "epochs": prog.epoch,
        "seed": recipe.seed,
        "recipe": recipe.to_dict(),
        "heldout_exit_accuracy": heldout,
        "test_exit_accuracy": test,
        "steps": prog.step,
        "train_images": len(run.split.train),
        "images_seen": prog.images,
        "train_time_s": round(prog.train_seconds, 3),
        "time_per_epoch_s": round(prog.train_seconds / max(prog.epoch, 1), 3),
        "images_per_s": round(prog.images / max(prog.train_seconds, 1e-9), 2),
        "wall_time_s": round(wall, 3),
        "world_size": run.ctx.world,
        "device": str(run.device.type),
        "precision": recipe.precision,
        "torch": torch.__version__,
    }
    bundle = None
    if run.ctx.is_main:
        preset = recipe.model.preset if is_preset(recipe.model.preset) else None
        bundle = save_bundle(
            run.out,
            run.module,
            name=recipe.name or run.out.resolve().name,
            class_names=run.train_set.class_names,
            preprocessing=run.preprocessing,
            preset=preset,
            dataset=recipe.data.dataset,
            heldout=(run.split.info, run.split.heldout),
            training=summary,
            folder=run.folder,
        )
    barrier(run.ctx)
    return TrainResult(run.out, bundle, heldout, test, summary)
