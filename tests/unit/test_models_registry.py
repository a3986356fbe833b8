"""The model registry refuses a name that is already taken, as timm's does."""

from __future__ import annotations

import pytest

from exitwise.models import (
    Preset,
    create_model,
    list_archs,
    register_arch,
    register_preset,
    registry,
)
from exitwise.models.msdnet import build_msdnet


@pytest.fixture(autouse=True)
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Registrations made by a test land in copies, so the real registry stays as it was.
    monkeypatch.setattr(registry, "_ARCHS", dict(registry._ARCHS))
    monkeypatch.setattr(registry, "_PRESETS", dict(registry._PRESETS))


def _preset(name: str, arch: str = "msdnet") -> Preset:
    return Preset(name, arch, {"num_classes": 3, "in_channels": 1}, 32, "a test preset")


def test_a_new_name_registers_and_builds() -> None:
    register_arch("msdnet-test-arch", build_msdnet)
    register_preset(_preset("msdnet-test-preset", "msdnet-test-arch"))
    assert "msdnet-test-arch" in list_archs()
    assert create_model("msdnet-test-preset").config_dict["num_classes"] == 3


def test_a_taken_architecture_name_is_refused() -> None:
    before = registry._ARCHS["msdnet"]
    with pytest.raises(ValueError, match="'msdnet' is already registered as an architecture"):
        register_arch("msdnet", build_msdnet)
    with pytest.raises(ValueError, match="'msdnet-cifar10' is already registered as a preset"):
        register_arch("msdnet-cifar10", build_msdnet)
    assert registry._ARCHS["msdnet"] is before


def test_a_taken_preset_name_is_refused() -> None:
    original = registry.get_preset("msdnet-fmnist")
    with pytest.raises(ValueError, match="'msdnet-fmnist' is already registered as a preset"):
        register_preset(_preset("msdnet-fmnist"))
    with pytest.raises(ValueError, match="'ranet' is already registered as an architecture"):
        register_preset(_preset("ranet"))
    assert registry.get_preset("msdnet-fmnist") is original
    register_preset(_preset("msdnet-test-once"))
    with pytest.raises(ValueError, match="already registered"):
        register_preset(_preset("msdnet-test-once"))
