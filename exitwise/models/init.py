"""Weight initialisation: ours, and the one the original code actually ran.

Both original code bases *write* the same initialisation, the one every builder here applies at
construction (:func:`exitwise.models.layers.init_weights`: He-normal with fan-out on every
convolution, BN to identity, zero linear bias). What they *run* differs (reference/algorithm.md
section 1.2):

- **MSDNet-PyTorch** calls its ``_init_weights`` on the direct children of each block and on its
  classifier modules, none of which is a convolution, a BN or a linear layer, so the call does
  nothing: every layer keeps PyTorch's default (convolution and linear weights
  ``kaiming_uniform_(a=sqrt(5))``, i.e. uniform in +-1/sqrt(fan_in), their biases uniform in the
  same range; BN weight 1, bias 0).
- **RANet-pytorch** recurses with ``.modules()`` over its scale flows and classifiers, but not over
  its first layer (``self.FirstLayer``): that one keeps PyTorch's default, the rest is He.

``original`` reproduces that, so a comparison with the papers' numbers starts where they started.
The defaults are drawn again (``reset_parameters``) after construction, from the same seeded RNG,
so a run stays a function of its seed. ``he`` is the builders' own initialisation and changes
nothing, bit for bit.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from .msdnet import MSDNet
from .ranet import RANet
from .staged import EarlyExitNet

Init = Literal["he", "original"]
INITS: tuple[Init, ...] = ("he", "original")

# The layers PyTorch gives a default initialisation and init_weights overrides.
_DEFAULTED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def default_init_scope(model: EarlyExitNet) -> nn.Module | None:
    """The part of ``model`` the original code left at PyTorch's defaults (None: nothing)."""
    if isinstance(model, MSDNet):
        return model  # the whole network
    if isinstance(model, RANet):
        first = getattr(model.stages[0], "first", None)  # RANet's FirstLayer runs in stage 1
        return first if isinstance(first, nn.Module) else None
    return None


def apply_init(model: EarlyExitNet, scheme: Init) -> list[str]:
    """Initialise a freshly built ``model`` by ``scheme``; return the names of the layers reset
    to PyTorch's defaults (relative to ``model``; none for ``he``)."""
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; expected one of {', '.join(INITS)}")
    if scheme == "he":
        return []
    scope = default_init_scope(model)
    if scope is None:
        raise ValueError(f"init 'original' is defined for MSDNet and RANet, not {model.arch!r}")
    prefix = {id(m): name for name, m in model.named_modules()}
    reset: list[str] = []
    for module in scope.modules():
        if isinstance(module, _DEFAULTED):
            module.reset_parameters()
            reset.append(prefix[id(module)])
    return reset
