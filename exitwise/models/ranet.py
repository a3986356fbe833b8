"""RANet (Yang et al., CVPR 2020) as a staged early-exit network, faithful to RANet-pytorch.

Scale flows run from the coarsest resolution to the finest. Flow f has ``num_blocks + block_step*f``
dense blocks; its first blocks fuse the previous flow's features of the same block index
("fusion" blocks), the rest are plain dense blocks, each followed by an exit.

Staging: the exit of flow f's first plain block also runs the first layer (f = 0) or flow f's
fusion blocks, which consume all of the previous flow's features. The state between stages is
``[inputs of the flows not yet started] + [current feature] + [per-layer features of the current
flow's blocks so far]`` (the last part only while a later flow will need it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import STEMS, ClassifierHead, ConvBasic, ConvBN, init_weights, stem_conv
from .sizing import ranet_stem
from .staged import EarlyExitNet, Stage, State


@dataclass(frozen=True)
class RANetConfig:
    num_classes: int = 100
    in_channels: int = 3
    num_blocks: int = 2  # blocks of the first (coarsest) flow
    block_step: int = 2  # extra blocks per later flow
    step: int = 4  # layers per block
    step_mode: Literal["even", "lg"] = "even"
    channels: int = 16
    growth_rate: int = 6
    gr_factor: tuple[int, ...] = (4, 2, 1, 1)  # coarsest flow first
    bn_factor: tuple[int, ...] = (4, 2, 1, 1)
    scale_list: tuple[int, ...] = (1, 2, 3, 3)
    compress_factor: float = 0.25
    reduction: float = 0.5
    stem: Literal["cifar", "imagenet"] = "cifar"
    head_channels: int | None = 128

    def __post_init__(self) -> None:
        n = len(self.scale_list)
        if not (len(self.gr_factor) == len(self.bn_factor) == n):
            raise ValueError("gr_factor, bn_factor and scale_list need one entry per scale flow")
        if self.step_mode not in ("even", "lg"):
            raise ValueError(f"step_mode must be 'even' or 'lg', not {self.step_mode!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, not {self.stem!r}")
        if self.step < 1 or self.num_blocks < 1 or self.block_step < 1:
            raise ValueError("step, num_blocks and block_step must be positive")
        for name in ("gr_factor", "bn_factor", "scale_list"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def num_flows(self) -> int:
        return len(self.scale_list)

    def blocks_per_flow(self) -> list[int]:
        return [self.num_blocks + self.block_step * f for f in range(self.num_flows)]

    def layers_in_block(self, b: int) -> int:
        """Layers of block b (0-based index within any flow; the same across flows)."""
        return self.step if self.step_mode == "even" else self.step * (b + 1)

    def to_kwargs(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("gr_factor", "bn_factor", "scale_list"):
            d[name] = list(d[name])
        return d


def _resize(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class FirstLayer(nn.Module):
    """Base features for every flow, returned coarsest first."""

    def __init__(self, cfg: RANetConfig) -> None:
        super().__init__()
        gr = cfg.gr_factor[::-1]
        scales = cfg.scale_list[::-1]
        self.layers = nn.ModuleList([stem_conv(cfg.stem, cfg.in_channels, cfg.channels * gr[0])])
        s = scales[0]
        for i in range(1, cfg.num_flows):
            stride = 1 if scales[i] == s else 2
            s = scales[i]
            self.layers.append(
                ConvBasic(cfg.channels * gr[i - 1], cfg.channels * gr[i], kernel=3, stride=stride)
            )

    def forward(self, x: Tensor) -> State:
        out: State = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out[::-1]


class DenseLayer(nn.Module):
    """concat[x, ConvBN_normal(x)]."""

    def __init__(self, c_in: int, growth: int, width: int) -> None:
        super().__init__()
        self.conv_normal = ConvBN(c_in, growth, down=False, bottleneck=True, width=width)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv_normal(x)], dim=1)


class FusionLayer(nn.Module):
    """concat[resize(x), resize(ConvBN(coarse)), ConvBN(x)] (the seed's ConvUpNormal)."""

    def __init__(
        self,
        c_in: int,
        c_coarse: int,
        growth: int,
        compress: float,
        down: bool,
        width: int,
        width_coarse: int,
    ) -> None:
        super().__init__()
        c_up = math.floor(growth * compress)
        self.conv_up = ConvBN(c_coarse, c_up, down=False, bottleneck=True, width=width_coarse)
        self.conv_normal = ConvBN(c_in, growth - c_up, down=down, bottleneck=True, width=width)

    def forward(self, coarse: Tensor, x: Tensor) -> Tensor:
        res = self.conv_normal(x)
        return torch.cat([_resize(x, res), _resize(self.conv_up(coarse), res), res], dim=1)


class PlainBlock(nn.Module):
    def __init__(
        self, n_layers: int, c_in: int, growth: int, width: int, trans_out: int | None
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [DenseLayer(c_in + i * growth, growth, width) for i in range(n_layers)]
        )
        c_out = c_in + n_layers * growth
        self.trans = ConvBasic(c_out, trans_out, kernel=1) if trans_out is not None else None

    def forward(self, x: Tensor) -> tuple[Tensor, State]:
        feats = [x]
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        if self.trans is not None:
            x = self.trans(x)
        return x, feats


class FusionBlock(nn.Module):
    def __init__(
        self,
        n_layers: int,
        c_in: int,
        c_coarse: list[int],
        growth: int,
        compress: float,
        down: bool,
        width: int,
        width_coarse: int,
        trans_out: int | None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                FusionLayer(
                    c_in + i * growth,
                    c_coarse[i],
                    growth,
                    compress,
                    down and i == n_layers - 1,
                    width,
                    width_coarse,
                )
                for i in range(n_layers)
            ]
        )
        c_out = c_in + n_layers * growth
        c_last = math.floor(c_out * compress)
        self.conv_last = ConvBasic(c_coarse[n_layers], c_last, kernel=1)
        self.trans = (
            ConvBasic(c_out + c_last, trans_out, kernel=1) if trans_out is not None else None
        )

    def forward(self, x: Tensor, coarse: State) -> tuple[Tensor, State]:
        feats = [x]
        for layer, c in zip(self.layers, coarse, strict=False):
            x = layer(c, x)
            feats.append(x)
        x = torch.cat([x, _resize(self.conv_last(coarse[len(self.layers)]), x)], dim=1)
        if self.trans is not None:
            x = self.trans(x)
        return x, feats


class RANetStage(Stage):
    """The plain block ``block`` of flow ``flow`` and its exit, plus what must run before it."""

    def __init__(
        self,
        cfg: RANetConfig,
        flow: int,
        block: int,
        first: FirstLayer | None,
        fusion: list[FusionBlock],
        plain: PlainBlock,
        head: ClassifierHead,
    ) -> None:
        super().__init__()
        self.first = first
        self.fusion = nn.ModuleList(fusion)
        self.plain = plain
        self.head = head
        self.n_pending = cfg.num_flows - 1 - flow  # inputs of later flows carried in the state
        self.keep_feats = flow < cfg.num_flows - 1
        # Per-layer feature counts of the blocks whose features arrive in the state.
        if first is not None:
            self.in_blocks: list[int] = []
        elif fusion:
            self.in_blocks = [cfg.layers_in_block(b) + 1 for b in range(len(fusion))]
        elif self.keep_feats:
            self.in_blocks = [cfg.layers_in_block(b) + 1 for b in range(block)]
        else:
            self.in_blocks = []
        self.starts_flow = first is not None or bool(fusion)

    def forward(self, state: State) -> tuple[State, Tensor]:
        if self.first is not None:
            inputs = self.first(state[0])
            x, pending = inputs[0], inputs[1:]
            feats: list[State] = []
        else:
            n_in_pending = self.n_pending + (1 if self.starts_flow else 0)
            pending = list(state[:n_in_pending])
            x = state[n_in_pending]
            flat = state[n_in_pending + 1 :]
            prev = _split(flat, self.in_blocks)
            if self.starts_flow:
                # Leave the previous flow: its last feature is dropped, its per-layer features
                # feed this flow's fusion blocks.
                x, pending = pending[0], pending[1:]
                feats = []
                for block, coarse in zip(self.fusion, prev, strict=True):
                    x, f = block(x, coarse)
                    feats.append(f)
            else:
                feats = prev
        # (in the last flow no later flow needs the features; they are not kept)
        x, f = self.plain(x)
        feats.append(f)
        logits = self.head(x)
        out = [*pending, x]
        if self.keep_feats:
            out += [t for block_feats in feats for t in block_feats]
        return out, logits


def _split(flat: State, sizes: list[int]) -> list[State]:
    out, i = [], 0
    for n in sizes:
        out.append(list(flat[i : i + n]))
        i += n
    if i != len(flat):
        raise ValueError(f"RANet state has {len(flat)} feature tensors, expected {i}")
    return out


class RANet(EarlyExitNet):
    arch = "ranet"

    def __init__(self, cfg: RANetConfig) -> None:
        super().__init__()
        self.config = cfg
        blocks = cfg.blocks_per_flow()
        prev_blocks = [0, *blocks]
        coarse_channels: list[list[int]] = []  # per block of the previous flow: per-layer widths
        for f in range(cfg.num_flows):
            c_in = cfg.channels * cfg.gr_factor[f]
            growth = cfg.growth_rate * cfg.gr_factor[f]
            down_at = _down_blocks(prev_blocks, f, cfg.scale_list[f])
            fusion: list[FusionBlock] = []
            flow_channels: list[list[int]] = []
            for b in range(blocks[f]):
                n_layers = cfg.layers_in_block(b)
                widths = [c_in + i * growth for i in range(n_layers + 1)]
                trans = _has_transition(b + 1, blocks[f], cfg.scale_list[f])
                if b < prev_blocks[f]:
                    c_out = widths[-1] + math.floor(widths[-1] * cfg.compress_factor)
                    trans_out = math.floor(cfg.reduction * c_out) if trans else None
                    fusion.append(
                        FusionBlock(
                            n_layers,
                            c_in,
                            coarse_channels[b],
                            growth,
                            cfg.compress_factor,
                            (b + 1) in down_at,
                            cfg.bn_factor[f],
                            cfg.bn_factor[f - 1],
                            trans_out,
                        )
                    )
                    c_in = trans_out if trans_out is not None else c_out
                else:
                    trans_out = math.floor(cfg.reduction * widths[-1]) if trans else None
                    plain = PlainBlock(n_layers, c_in, growth, cfg.bn_factor[f], trans_out)
                    c_in = trans_out if trans_out is not None else widths[-1]
                    head = ClassifierHead(c_in, cfg.head_channels or c_in, cfg.num_classes)
                    first = FirstLayer(cfg) if f == 0 and b == 0 else None
                    self.stages.append(RANetStage(cfg, f, b, first, fusion, plain, head))
                    fusion = []
                flow_channels.append(widths)
            coarse_channels = flow_channels
        init_weights(self)

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_kwargs()


def _down_blocks(prev_blocks: list[int], f: int, scale: int) -> list[int]:
    """Fusion blocks (1-based) whose last layer halves the resolution (seed's rule)."""
    if f == 0:
        return []
    # The seed writes nBlocks[:f+1][-(scale-1):]; for scale == 1 that slice is the whole list.
    head = prev_blocks[: f + 1]
    return head[-(scale - 1) :] if scale > 1 else head


def _has_transition(block: int, n_blocks: int, scale: int) -> bool:
    return any(block == math.floor((i + 1) * n_blocks / scale) for i in range(scale - 1))


def build_ranet(input_size: int | None = None, **kwargs: Any) -> RANet:
    """RANet from its config's fields; ``input_size`` picks the stem for that many pixels and
    refuses sizes its scale flows do not fit (:mod:`exitwise.models.sizing`)."""
    if input_size is not None:
        scales = kwargs.get("scale_list", RANetConfig.scale_list)
        kwargs = {**kwargs, "stem": ranet_stem(input_size, max(scales) - 1)}
    return RANet(RANetConfig(**kwargs))
