"""One batched pass of a bundle's network over a split: per exit, confidence, prediction, top-5.

Images go through :func:`exitwise.preprocess.normalize`, exactly what the server does to an
uploaded image, and confidences through :func:`exitwise.policy.confidence_and_prediction`, the
function the server's exit decisions use.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from exitwise.datasets import EvalImages
from exitwise.models import EarlyExitNet
from exitwise.policy import confidence_and_prediction
from exitwise.preprocess import normalize

from .errors import DataMismatchError
from .scores import SplitScores


def compute_scores(
    model: EarlyExitNet,
    view: EvalImages,
    *,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    keep_logits: bool = False,
    desc: str = "",
    progress: bool | None = None,
) -> SplitScores:
    """Run ``model`` (already on ``device``, in eval mode) over every image of ``view``."""
    from tqdm import tqdm

    spec = view.preprocessing
    n, k = len(view), model.num_exits
    conf = np.empty((n, k), dtype=np.float64)
    pred = np.empty((n, k), dtype=np.int64)
    top5 = np.empty((n, k), dtype=bool)
    labels = np.empty(n, dtype=np.int64)
    logits_out: np.ndarray | None = None
    loader = torch.utils.data.DataLoader(
        view,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    show = sys.stderr.isatty() if progress is None else progress
    start = 0
    model.eval()
    with (
        torch.inference_mode(),
        tqdm(total=n, desc=desc, unit="img", disable=not show, leave=False) as bar,
    ):
        for pixels, target in loader:
            x = normalize(pixels.to(device, non_blocking=True), spec)
            try:
                outputs = model(x)
            except RuntimeError as err:
                raise DataMismatchError(
                    f"the network cannot run on the data set's images "
                    f"{tuple(x.shape[1:])}: {str(err).splitlines()[0]}"
                ) from err
            end = start + len(target)
            y = target.to(device)
            for j, out in enumerate(outputs):
                c, p = confidence_and_prediction(out)
                best = out.topk(min(5, out.shape[1]), dim=1).indices
                conf[start:end, j] = c.cpu().numpy()
                pred[start:end, j] = p.cpu().numpy()
                top5[start:end, j] = (best == y[:, None]).any(dim=1).cpu().numpy()
                if keep_logits:
                    if logits_out is None:
                        logits_out = np.empty((n, k, out.shape[1]), dtype=np.float32)
                    logits_out[start:end, j] = out.float().cpu().numpy()
            labels[start:end] = target.numpy()
            bar.update(end - start)
            start = end
    return SplitScores(
        confidence=conf, prediction=pred, top5=top5, labels=labels, logits=logits_out
    )
