"""MSDNet (Huang et al., ICLR 2018) as a staged early-exit network, faithful to MSDNet-PyTorch.

Scales are kept finest first. Each block adds ``steps[i]`` dense multi-scale layers; the finest
scale is pruned ("max" mode) every ``ceil(L / nScales)`` layers with a 1x1 transition halving the
channels; each block ends in a classifier that reads the coarsest scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .layers import STEMS, ClassifierHead, ConvBasic, ConvBN, init_weights, stem_conv
from .sizing import msdnet_kwargs
from .staged import EarlyExitNet, Stage, State


@dataclass(frozen=True)
class MSDNetConfig:
    num_classes: int = 100
    in_channels: int = 3
    num_blocks: int = 5
    base: int = 1
    step: int = 1
    step_mode: Literal["even", "lin_grow"] = "lin_grow"
    channels: int = 16
    growth_rate: int = 6
    gr_factor: tuple[int, ...] = (1, 2, 4)
    bn_factor: tuple[int, ...] = (1, 2, 4)
    prune: Literal["max", "min"] = "max"
    reduction: float = 0.5
    bottleneck: bool = True
    stem: Literal["cifar", "imagenet"] = "cifar"
    # Width of the classifier's convolutions: 128 in the seed's CIFAR head; None = input width
    # (the seed's ImageNet head).
    head_channels: int | None = 128
    steps: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.gr_factor) != len(self.bn_factor):
            raise ValueError("gr_factor and bn_factor must have one entry per scale")
        if self.num_blocks < 1 or self.base < 1 or self.step < 1:
            raise ValueError("num_blocks, base and step must be positive")
        if self.step_mode not in ("even", "lin_grow"):
            raise ValueError(f"step_mode must be 'even' or 'lin_grow', not {self.step_mode!r}")
        if self.prune not in ("max", "min"):
            raise ValueError(f"prune must be 'max' or 'min', not {self.prune!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, not {self.stem!r}")
        steps = [self.base] + [
            self.step if self.step_mode == "even" else self.step * i + 1
            for i in range(1, self.num_blocks)
        ]
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "gr_factor", tuple(self.gr_factor))
        object.__setattr__(self, "bn_factor", tuple(self.bn_factor))

    @property
    def num_scales(self) -> int:
        return len(self.gr_factor)

    def to_kwargs(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("steps")
        d["gr_factor"] = list(self.gr_factor)
        d["bn_factor"] = list(self.bn_factor)
        return d


class FirstLayer(nn.Module):
    """Turns an image into the list of initial scale features, finest first."""

    def __init__(self, cfg: MSDNetConfig) -> None:
        super().__init__()
        gr = cfg.gr_factor
        self.layers = nn.ModuleList([stem_conv(cfg.stem, cfg.in_channels, cfg.channels * gr[0])])
        for s in range(1, cfg.num_scales):
            self.layers.append(
                ConvBasic(cfg.channels * gr[s - 1], cfg.channels * gr[s], kernel=3, stride=2)
            )

    def forward(self, x: Tensor) -> State:
        out: State = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class ConvNormal(nn.Module):
    """concat[x, ConvBN_normal(x)]: the first output scale when no scale is dropped."""

    def __init__(self, c_in: int, c_out: int, bottleneck: bool, width: int) -> None:
        super().__init__()
        self.conv_normal = ConvBN(c_in, c_out, down=False, bottleneck=bottleneck, width=width)

    def forward(self, finer: Tensor | None, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv_normal(x)], dim=1)


class ConvDownNormal(nn.Module):
    """concat[x_s, ConvBN_down(x_{s-1}), ConvBN_normal(x_s)], each conv giving half the growth."""

    def __init__(
        self, c_finer: int, c_in: int, c_out: int, bottleneck: bool, width_finer: int, width: int
    ) -> None:
        super().__init__()
        self.conv_down = ConvBN(
            c_finer, c_out // 2, down=True, bottleneck=bottleneck, width=width_finer
        )
        self.conv_normal = ConvBN(c_in, c_out // 2, down=False, bottleneck=bottleneck, width=width)

    def forward(self, finer: Tensor | None, x: Tensor) -> Tensor:
        assert finer is not None
        return torch.cat([x, self.conv_down(finer), self.conv_normal(x)], dim=1)


class MSDNLayer(nn.Module):
    """One dense multi-scale layer, from ``in_scales`` to ``out_scales`` scales."""

    def __init__(self, c_in: int, growth: int, cfg: MSDNetConfig, in_scales: int, out_scales: int):
        super().__init__()
        gr, bn = cfg.gr_factor, cfg.bn_factor
        self.discard = in_scales - out_scales
        self.out_scales = out_scales
        offset = cfg.num_scales - out_scales
        self.layers = nn.ModuleList()
        if self.discard > 0:
            self.layers.append(
                ConvDownNormal(
                    c_in * gr[offset - 1],
                    c_in * gr[offset],
                    growth * gr[offset],
                    cfg.bottleneck,
                    bn[offset - 1],
                    bn[offset],
                )
            )
        else:
            self.layers.append(
                ConvNormal(c_in * gr[offset], growth * gr[offset], cfg.bottleneck, bn[offset])
            )
        for s in range(offset + 1, cfg.num_scales):
            self.layers.append(
                ConvDownNormal(
                    c_in * gr[s - 1], c_in * gr[s], growth * gr[s], cfg.bottleneck, bn[s - 1], bn[s]
                )
            )

    def forward(self, x: State) -> State:
        # With a discarded scale, output i reads inputs (i, i+1); otherwise output 0 reads only
        # input 0 and output i reads (i-1, i).
        pairs: list[tuple[Tensor | None, Tensor]]
        if self.discard > 0:
            pairs = [(x[i - 1], x[i]) for i in range(1, self.out_scales + 1)]
        else:
            pairs = [(None, x[0])] + [(x[i - 1], x[i]) for i in range(1, self.out_scales)]
        return [layer(f, c) for layer, (f, c) in zip(self.layers, pairs, strict=True)]


class Transition(nn.Module):
    """A 1x1 ConvBasic per remaining scale that reduces the channels."""

    def __init__(self, c_in: int, c_out: int, out_scales: int, offset: int, gr: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                ConvBasic(c_in * gr[offset + i], c_out * gr[offset + i], kernel=1)
                for i in range(out_scales)
            ]
        )

    def forward(self, x: State) -> State:
        return [conv(t) for conv, t in zip(self.convs, x, strict=True)]


class MSDNetStage(Stage):
    """Block k of MSDNet (with the first layer for k = 0) and classifier k."""

    def __init__(
        self, first: FirstLayer | None, layers: list[nn.Module], head: ClassifierHead
    ) -> None:
        super().__init__()
        self.first = first
        self.layers = nn.ModuleList(layers)
        self.head = head

    def forward(self, state: State) -> tuple[State, Tensor]:
        x = self.first(state[0]) if self.first is not None else list(state)
        for layer in self.layers:
            x = layer(x)
        return x, self.head(x[-1])


class MSDNet(EarlyExitNet):
    arch = "msdnet"

    def __init__(self, cfg: MSDNetConfig) -> None:
        super().__init__()
        self.config = cfg
        total_layers = sum(cfg.steps)
        c_in = cfg.channels
        layer_index = 0
        for block, step in enumerate(cfg.steps):
            layers: list[nn.Module] = []
            for _ in range(step):
                layer_index += 1
                in_scales, out_scales = _scales(cfg, layer_index, total_layers)
                layers.append(MSDNLayer(c_in, cfg.growth_rate, cfg, in_scales, out_scales))
                c_in += cfg.growth_rate
                if _has_transition(cfg, layer_index, total_layers, in_scales, out_scales):
                    c_out = math.floor(cfg.reduction * c_in)
                    offset = cfg.num_scales - out_scales
                    layers.append(Transition(c_in, c_out, out_scales, offset, cfg.gr_factor))
                    c_in = c_out
            width = c_in * cfg.gr_factor[-1]
            head = ClassifierHead(width, cfg.head_channels or width, cfg.num_classes)
            first = FirstLayer(cfg) if block == 0 else None
            self.stages.append(MSDNetStage(first, layers, head))
        init_weights(self)

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_kwargs()


def _scales(cfg: MSDNetConfig, t: int, total: int) -> tuple[int, int]:
    """(in_scales, out_scales) of the t-th layer (1-based) under the pruning mode."""
    n = cfg.num_scales
    if cfg.prune == "min":
        return min(n, total - t + 2), min(n, total - t + 1)
    interval = math.ceil(total / n)
    return n - (max(0, t - 2) // interval), n - ((t - 1) // interval)


def _has_transition(cfg: MSDNetConfig, t: int, total: int, in_s: int, out_s: int) -> bool:
    if cfg.reduction <= 0:
        return False
    if cfg.prune == "max":
        return in_s > out_s
    return t in (math.floor(total / 3), math.floor(2 * total / 3))


def build_msdnet(input_size: int | None = None, **kwargs: Any) -> MSDNet:
    """MSDNet from its config's fields; ``input_size`` picks the stem and the scales for that
    many pixels (:mod:`exitwise.models.sizing`), overriding ``stem``, ``gr_factor``, ``bn_factor``
    (cut or extended to the number of scales)."""
    if input_size is not None:
        kwargs = msdnet_kwargs(input_size, kwargs, MSDNetConfig.gr_factor)
    return MSDNet(MSDNetConfig(**kwargs))
