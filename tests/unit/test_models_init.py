"""``model.init``: ``he`` (the default) leaves the builders' initialisation bit for bit;
``original`` gives the layers the original code never reached PyTorch's defaults: all of MSDNet,
RANet's first layer only."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from exitwise.models import EarlyExitNet, apply_init, create_model
from exitwise.preprocess import FASHION_MNIST
from training.build import build_model
from training.config import RecipeError
from training.recipe_io import build_recipe

CLASSES = [str(i) for i in range(10)]
SMALL_MSD = {"num_classes": 10, "channels": 4, "growth_rate": 2, "head_channels": 8}
SMALL_RANET = {"num_classes": 10, "head_channels": 8}


def _built(name: str, seed: int = 3, **kwargs: object) -> EarlyExitNet:
    torch.manual_seed(seed)
    return create_model(name, **kwargs)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _default_uniform(w: torch.Tensor) -> bool:
    """Weights inside +-1/sqrt(fan_in) with that uniform's spread: PyTorch's default for
    convolutions and linear layers (kaiming_uniform, a=sqrt(5)); He-normal (std sqrt(2/fan_out))
    is wider and unbounded."""
    w = w.detach()
    bound = 1 / math.sqrt(w[0].numel())
    within = bool(w.abs().max() <= bound + 1e-7)
    if w.numel() < 200:
        return within
    return within and abs(float(w.std()) - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3)


def _is_pytorch_default(module: nn.Module) -> bool:
    if isinstance(module, nn.BatchNorm2d):
        return bool((module.weight == 1).all() and (module.bias == 0).all())
    return _default_uniform(module.weight)


def test_he_is_the_builders_init_bit_for_bit() -> None:
    model = _built("msdnet-cifar10", **SMALL_MSD)
    before = _state(model)
    assert apply_init(model, "he") == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # A recipe without the key builds the same weights as one that names the default.
    recipe = {"model": {"preset": "msdnet-cifar10", "kwargs": SMALL_MSD}, "epochs": 1}
    recipe |= {"batch_size": 8, "data": {"dataset": "fashion-mnist", "channels": 3}}
    rgb = FASHION_MNIST.model_copy(update={"channels": 3, "mean": (0.3,) * 3, "std": (0.3,) * 3})
    torch.manual_seed(3)
    plain = build_model(build_recipe(recipe), rgb, CLASSES)
    torch.manual_seed(3)
    named = build_model(build_recipe(recipe, ["model.init=he"]), rgb, CLASSES)
    assert build_recipe(recipe).model.init == "he"
    for k, v in plain.state_dict().items():
        assert torch.equal(v, named.state_dict()[k]) and torch.equal(v, before[k]), k


def test_original_msdnet_keeps_pytorch_defaults_everywhere() -> None:
    model = _built("msdnet-cifar10", **SMALL_MSD)
    he = _state(model)
    reset = apply_init(model, "original")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert set(reset) == set(layers) | set(bns)  # every layer
    assert all(_is_pytorch_default(m) for m in layers.values())
    # Under He the same layers were not at the defaults (the check can tell them apart) ...
    big = max(layers, key=lambda n: layers[n].weight.numel())
    assert not _default_uniform(he[f"{big}.weight"])
    # ... and the linear biases, zero under He, are drawn again.
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert float(linear.bias.detach().abs().sum()) > 0


def test_original_ranet_resets_the_first_layer_only() -> None:
    model = _built("ranet-cifar100", **SMALL_RANET)
    he = _state(model)
    reset = apply_init(model, "original")
    assert reset and all(name.startswith("stages.0.first.") for name in reset)
    first = model.stages[0].first
    assert all(
        _is_pytorch_default(m)
        for m in first.modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
    )
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, he[k])}
    assert changed and all(k.startswith("stages.0.first.") for k in changed)


def test_recipe_key_is_checked_and_reaches_the_model() -> None:
    recipe = {"model": {"preset": "msdnet-fmnist", "kwargs": {"channels": 4}}, "epochs": 1}
    recipe |= {"batch_size": 8, "data": {"dataset": "fashion-mnist"}}
    with pytest.raises(RecipeError, match=r"model.init: Input should be 'he' or 'original'"):
        build_recipe(recipe, ["model.init=orig"])
    torch.manual_seed(0)
    model = build_model(build_recipe(recipe, ["model.init=original"]), FASHION_MNIST, CLASSES)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(_is_pytorch_default(m) for m in convs)
