"""Networks sized for the images: ``input_size`` picks the stem and scales; presets unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from cli import main
from exitwise.flops import exit_costs
from exitwise.models import create_model, get_preset, list_presets
from exitwise.models.sizing import head_inputs, stem_output

SMALL = {"channels": 4, "growth_rate": 2, "head_channels": 8, "num_classes": 3}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(p.name, marks=pytest.mark.slow) if p.input_size > 32 else p.name
        for p in list_presets()
    ],
)
def test_a_preset_at_its_own_size_is_the_preset(name: str) -> None:
    preset = get_preset(name)
    torch.manual_seed(0)
    plain = create_model(name).eval()
    torch.manual_seed(0)
    sized = create_model(name, input_size=preset.input_size).eval()
    assert sized.config_dict == plain.config_dict and repr(sized) == repr(plain)
    for a, b in zip(plain.state_dict().values(), sized.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    if preset.input_size > 32:
        return  # same modules, same weights; the forward below is for the quick ones
    x = torch.randn(1, preset.in_channels, preset.input_size, preset.input_size)
    with torch.no_grad():
        for a, b in zip(plain(x), sized(x), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("size", "stem", "scales"),
    [(16, "cifar", 2), (28, "cifar", 3), (32, "cifar", 3), (48, "cifar", 4), (64, "cifar", 4),
     (65, "half", 4), (96, "half", 4), (128, "half", 4), (160, "imagenet", 4),
     (224, "imagenet", 4), (256, "imagenet", 4)],
)  # fmt: skip
def test_msdnet_picks_stem_and_scales_so_every_exit_reads_5_to_8_pixels(
    size: int, stem: str, scales: int
) -> None:
    model = create_model("msdnet", input_size=size, **SMALL)
    cfg = model.config_dict
    assert cfg["stem"] == stem and len(cfg["gr_factor"]) == scales == len(cfg["bn_factor"])
    assert stem_output(stem, size) <= 64  # the finest scale stays affordable
    assert all(5 <= s <= 8 for s in head_inputs(model, size, 3))
    rebuilt = create_model("msdnet", **cfg)  # what a bundle stores rebuilds without input_size
    assert rebuilt.config_dict == cfg


def test_scale_factors_follow_the_presets_pattern() -> None:
    cifar = create_model("msdnet-cifar10", input_size=64).config_dict
    assert cifar["gr_factor"] == [1, 2, 4, 4] and cifar["num_blocks"] == 5
    small = create_model("msdnet-imagenet-step4", input_size=24, num_classes=5).config_dict
    assert small["stem"] == "cifar" and small["gr_factor"] == [1, 2, 4]
    costs = [c.mflops for c in exit_costs(create_model("msdnet-fmnist", input_size=64), 64, 1)]
    assert costs == sorted(costs) and 3 * 12.1 < costs[-1] < 4 * 12.1  # ~3.8x the 32-px model


@pytest.mark.parametrize(("size", "stem"), [(17, "cifar"), (32, "cifar"), (64, "half"),
                                            (128, "imagenet"), (192, "imagenet")])  # fmt: skip
def test_ranet_takes_the_stem_its_flows_fit(size: int, stem: str) -> None:
    model = create_model("ranet", input_size=size, num_classes=3, head_channels=8)
    assert model.config_dict["stem"] == stem
    assert all(5 <= s <= 12 for s in head_inputs(model, size, 3))


@pytest.mark.parametrize("size", [16, 224])
def test_ranet_refuses_sizes_its_flows_do_not_fit(size: int) -> None:
    with pytest.raises(ValueError, match=f"do not fit {size}-pixel inputs.*msdnet sizes itself"):
        create_model("ranet-cifar100", input_size=size)


def test_sizes_outside_the_range_are_refused() -> None:
    for size in (8, 1024):
        with pytest.raises(ValueError, match="sized for 16-512 pixels"):
            create_model("msdnet-cifar10", input_size=size)


def test_inspect_preset_at_an_image_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "msdnet-fmnist", "--image-size", "96", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input"] == {"channels": 1, "size": 96}
    model = create_model("msdnet-fmnist", input_size=96)
    expected = [round(c.mflops, 4) for c in exit_costs(model, 96, 1)]
    assert [e["mflops"] for e in info["exits"]] == expected
    assert main(["inspect", "ranet-cifar100", "--image-size", "224"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ranet-cifar100 at --image-size 224: ranet's scale flows")
    assert len(err.strip().splitlines()) == 1
