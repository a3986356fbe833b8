"""Networks sized for the images: the input size picks the stem and the number of scales.

Every exit's classifier (:class:`~exitwise.models.layers.ClassifierHead`) halves its input twice
and pools 2x2, so it needs a 5-8 pixel map at the coarsest scale (the seed's 8 at 32 pixels, 7 at
224; up to 12 still pools to one pixel). Given ``input_size``, the builders choose:

- **MSDNet**: the stem that keeps the finest scale at most 64 pixels (the 3x3/1 CIFAR stem up to
  64 pixels, a 3x3/2 stem up to 128, the ImageNet stem, a quarter of the resolution, above), then
  as many scales as it takes to halve the finest one into 5-8 pixels (32 px: 3 scales, 64 px: 4,
  224 px: 4 after the ImageNet stem), with ``gr_factor`` / ``bn_factor`` cut to that many entries
  or extended with their last value. Blocks (exits), widths and growth stay as given.
- **RANet** keeps its scale flows: the first of those stems whose coarsest flow fits the exits is
  taken, and a size none fits is refused (the CIFAR preset fits 17-192 pixels, the ImageNet
  one 33-384).

At a preset's own input size the rule gives the preset's own geometry, so
``create_model(preset, input_size=preset.input_size)`` is the preset itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .layers import ClassifierHead

STEM_ORDER = ("cifar", "half", "imagenet")  # 3x3/1, 3x3/2, 7x7/2 + max-pool
FINEST_MAX = 64  # MSDNet's finest scale, at most (pixels)
HEAD_MIN, HEAD_MAX = 5, 8  # coarsest map the rule aims for
HEAD_LIMIT = 12  # the largest map a head still pools to 1x1 (it then drops a border)
MIN_SIZE, MAX_SIZE = 16, 512


def _half(n: int) -> int:
    """A convolution or pooling of stride 2 with "same" padding: ceil(n / 2)."""
    return (n + 1) // 2


def check_size(input_size: int) -> None:
    if not MIN_SIZE <= input_size <= MAX_SIZE:
        raise ValueError(
            f"input_size {input_size}: networks are sized for {MIN_SIZE}-{MAX_SIZE} pixels"
        )


def stem_output(stem: str, input_size: int) -> int:
    halvings = STEM_ORDER.index(stem)
    size = input_size
    for _ in range(halvings):
        size = _half(size)
    return size


def halved(size: int, times: int) -> int:
    for _ in range(times):
        size = _half(size)
    return size


def msdnet_stem(input_size: int) -> str:
    return next(
        s for s in STEM_ORDER if stem_output(s, input_size) <= FINEST_MAX or s == "imagenet"
    )


def scales_for(finest: int) -> int:
    """How many scales halve ``finest`` pixels into the 5-8 pixels an exit reads."""
    if finest < HEAD_MIN:
        raise ValueError(f"a {finest}-pixel map is too small for an exit (it needs {HEAD_MIN})")
    scales = 1
    while finest > HEAD_MAX:
        finest = _half(finest)
        scales += 1
    return scales


def fit_factors(factors: Sequence[int], scales: int) -> list[int]:
    """``factors`` cut to ``scales`` entries, or extended with its last value."""
    out = list(factors)[:scales]
    return out + [out[-1]] * (scales - len(out))


def msdnet_kwargs(
    input_size: int, kwargs: dict[str, Any], factors: Sequence[int]
) -> dict[str, Any]:
    """MSDNet's ``kwargs`` with the stem and scale factors for ``input_size`` pixels."""
    check_size(input_size)
    stem = msdnet_stem(input_size)
    n = scales_for(stem_output(stem, input_size))
    out = {**kwargs, "stem": stem}
    for key in ("gr_factor", "bn_factor"):
        out[key] = fit_factors(kwargs.get(key, factors), n)
    return out


def ranet_stem(input_size: int, halvings: int) -> str:
    """The first stem whose coarsest flow (``halvings`` below the finest) fits the exits."""
    check_size(input_size)
    sizes = {s: halved(stem_output(s, input_size), halvings) for s in STEM_ORDER}
    for low, high in ((HEAD_MIN, HEAD_MAX), (HEAD_MIN, HEAD_LIMIT)):
        for stem, coarsest in sizes.items():
            if low <= coarsest <= high:
                return stem
    shown = ", ".join(f"{s}: {c}" for s, c in sizes.items())
    raise ValueError(
        f"ranet's scale flows do not fit {input_size}-pixel inputs (coarsest map per stem: "
        f"{shown}; the exits need {HEAD_MIN}-{HEAD_LIMIT}); msdnet sizes itself for any "
        "input_size"
    )


def head_inputs(model: nn.Module, input_size: int, in_channels: int) -> list[int]:
    """The map size (pixels) each exit's classifier reads for one ``input_size`` image."""
    sizes: list[int] = []

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        sizes.append(int(min(args[0].shape[-2:])))

    hooks = [
        m.register_forward_pre_hook(record)
        for m in model.modules()
        if isinstance(m, ClassifierHead)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return sizes
