"""Architectures (MSDNet, RANet), their staged forward pass, and the registry of presets."""

from .init import INITS, Init, apply_init
from .msdnet import MSDNet, MSDNetConfig
from .ranet import RANet, RANetConfig
from .registry import (
    Preset,
    create_model,
    get_preset,
    is_preset,
    list_archs,
    list_presets,
    register_arch,
    register_preset,
)
from .staged import EarlyExitNet, Stage, State, select_rows

__all__ = [
    "INITS",
    "EarlyExitNet",
    "Init",
    "MSDNet",
    "MSDNetConfig",
    "Preset",
    "RANet",
    "RANetConfig",
    "Stage",
    "State",
    "apply_init",
    "create_model",
    "get_preset",
    "is_preset",
    "list_archs",
    "list_presets",
    "register_arch",
    "register_preset",
    "select_rows",
]
