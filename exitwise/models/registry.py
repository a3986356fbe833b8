"""One registry of architectures and named presets; ``create_model(name, **kwargs)`` builds either.

An architecture is a builder taking typed keyword arguments (its config dataclass's fields). A
preset is an architecture plus keyword arguments plus the input it was designed for; extra
keyword arguments given to :func:`create_model` override the preset's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownModelError
from .msdnet import build_msdnet
from .ranet import build_ranet
from .staged import EarlyExitNet

Builder = Callable[..., EarlyExitNet]

_ARCHS: dict[str, Builder] = {}
_PRESETS: dict[str, Preset] = {}


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    kwargs: dict[str, Any]
    input_size: int  # square input, in pixels, at which FLOPs are counted
    description: str
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def in_channels(self) -> int:
        return int(self.kwargs.get("in_channels", 3))

    @property
    def num_classes(self) -> int:
        return int(self.kwargs["num_classes"])


def _check_new_name(name: str) -> None:
    # As timm's registry: a second registration under a taken name is a mistake (two modules
    # defining the same model), and silently replacing the first would change what a name builds.
    # Architectures and presets share one namespace, since create_model looks a name up in both.
    if name in _ARCHS or name in _PRESETS:
        kind = "an architecture" if name in _ARCHS else "a preset"
        raise ValueError(f"model name {name!r} is already registered as {kind}")


def register_arch(name: str, builder: Builder) -> None:
    """Register an architecture builder; a name already taken is refused (``ValueError``)."""
    _check_new_name(name)
    _ARCHS[name] = builder


def register_preset(preset: Preset) -> None:
    """Register a preset of a registered architecture; a name already taken is refused."""
    if preset.arch not in _ARCHS:
        raise ValueError(f"preset {preset.name!r} names unknown architecture {preset.arch!r}")
    _check_new_name(preset.name)
    _PRESETS[preset.name] = preset


def list_archs() -> list[str]:
    return sorted(_ARCHS)


def list_presets() -> list[Preset]:
    return [_PRESETS[k] for k in sorted(_PRESETS)]


def get_preset(name: str) -> Preset:
    try:
        return _PRESETS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown preset {name!r}; known presets: {', '.join(sorted(_PRESETS))}"
        ) from None


def is_preset(name: str) -> bool:
    return name in _PRESETS


def create_model(name: str, **kwargs: Any) -> EarlyExitNet:
    """Build a preset (its kwargs overridden by ``kwargs``) or an architecture from ``kwargs``."""
    if name in _PRESETS:
        preset = _PRESETS[name]
        return _ARCHS[preset.arch](**{**preset.kwargs, **kwargs})
    if name in _ARCHS:
        return _ARCHS[name](**kwargs)
    raise UnknownModelError(
        f"unknown model {name!r}; architectures: {', '.join(sorted(_ARCHS))}; "
        f"presets: {', '.join(sorted(_PRESETS))}"
    )


# --- built-in architectures and presets -------------------------------------------------------

register_arch("msdnet", build_msdnet)
register_arch("ranet", build_ranet)

_MSDNET_IMAGENET = dict(
    num_classes=1000,
    stem="imagenet",
    step_mode="even",
    channels=32,
    growth_rate=16,
    gr_factor=[1, 2, 4, 4],
    bn_factor=[1, 2, 4, 4],
    head_channels=None,
)

for _preset in [
    Preset(
        "msdnet-cifar10",
        "msdnet",
        dict(num_classes=10),
        32,
        "MSDNet for CIFAR-10: 5 exits, lin_grow step 1 (seed's budgeted CIFAR model)",
        ("cifar",),
    ),
    Preset(
        "msdnet-cifar100",
        "msdnet",
        dict(num_classes=100),
        32,
        "MSDNet for CIFAR-100: 5 exits, lin_grow step 1 (seed's budgeted CIFAR model)",
        ("cifar",),
    ),
    Preset(
        "msdnet-imagenet-step4",
        "msdnet",
        {**_MSDNET_IMAGENET, "step": 4, "base": 4},
        224,
        "MSDNet for ImageNet: 5 exits, 4 layers per block",
        ("imagenet",),
    ),
    Preset(
        "msdnet-imagenet-step6",
        "msdnet",
        {**_MSDNET_IMAGENET, "step": 6, "base": 6},
        224,
        "MSDNet for ImageNet: 5 exits, 6 layers per block (base 6, as the released model)",
        ("imagenet",),
    ),
    Preset(
        "msdnet-imagenet-step7",
        "msdnet",
        {**_MSDNET_IMAGENET, "step": 7, "base": 7},
        224,
        "MSDNet for ImageNet: 5 exits, 7 layers per block (base 7, as the released model)",
        ("imagenet",),
    ),
    Preset(
        "ranet-cifar100",
        "ranet",
        dict(num_classes=100),
        32,
        "RANet for CIFAR-100: 4 scale flows, 8 exits (seed's train_cifar.sh)",
        ("cifar",),
    ),
    Preset(
        "ranet-imagenet",
        "ranet",
        dict(
            num_classes=1000,
            stem="imagenet",
            step=8,
            growth_rate=16,
            scale_list=[1, 2, 3, 4],
            gr_factor=[4, 2, 1, 1],
            bn_factor=[4, 2, 1, 1],
            head_channels=None,
        ),
        224,
        "RANet for ImageNet: 4 scale flows, 8 exits (seed's train_imagenet.sh)",
        ("imagenet",),
    ),
    Preset(
        "msdnet-fmnist",
        "msdnet",
        dict(
            num_classes=10,
            in_channels=1,
            num_blocks=4,
            channels=8,
            growth_rate=4,
            head_channels=32,
        ),
        32,
        "Small MSDNet for 1-channel 28x28 images padded to 32 (Fashion-MNIST): 4 exits, "
        "trains in minutes on a CPU",
        ("fmnist", "demo"),
    ),
]:
    register_preset(_preset)
