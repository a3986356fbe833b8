"""Per-exit top-1 accuracy on un-augmented images (held-out or test split).

Images go through ``EvalImages`` (eval geometry) and ``exitwise.preprocess.normalize``: the same
path calibration and the server use, so the accuracy reported in the bundle is the one they see.
With several processes each evaluates a strided share and the counts are summed.
"""

from __future__ import annotations

import torch
from torch import nn

from exitwise.datasets import EvalImages
from exitwise.preprocess import normalize

from .distributed import DistContext, all_reduce_sum


@torch.no_grad()
def exit_accuracy(
    model: nn.Module,
    view: EvalImages,
    device: torch.device,
    *,
    batch_size: int = 500,
    workers: int = 0,
    ctx: DistContext | None = None,
) -> list[float]:
    """Top-1 accuracy in percent at every exit, over all images of ``view``."""
    ctx = ctx or DistContext()
    shard: torch.utils.data.Dataset[tuple[torch.Tensor, int]] = view
    if ctx.active:
        shard = torch.utils.data.Subset(view, list(range(ctx.rank, len(view), ctx.world)))
    loader = torch.utils.data.DataLoader(
        shard, batch_size=batch_size, shuffle=False, num_workers=workers
    )
    was_training = model.training
    model.eval()
    correct: torch.Tensor | None = None
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for pixels, labels in loader:
            x = normalize(pixels.to(device, non_blocking=True), view.preprocessing)
            y = labels.to(device, non_blocking=True)
            hits = torch.stack([(out.argmax(dim=1) == y).sum() for out in model(x)])
            correct = hits.double() if correct is None else correct + hits.double()
            total += y.numel()
    finally:
        model.train(was_training)
    if correct is None:  # this process had no images
        num_exits = int(getattr(model, "num_exits", 0))
        correct = torch.zeros(num_exits, dtype=torch.float64, device=device)
    all_reduce_sum(correct, ctx)
    all_reduce_sum(total, ctx)
    if float(total) == 0:
        raise ValueError("no images to evaluate")
    return [round(100.0 * float(c) / float(total), 4) for c in correct]
