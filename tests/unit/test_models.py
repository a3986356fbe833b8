"""Architectures: staged forward, row dropping between stages, initialisation, parameters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from exitwise.models import create_model, get_preset, list_presets, select_rows

PRESETS = [p.name for p in list_presets()]


def _input(name: str, batch: int, seed: int = 0) -> torch.Tensor:
    p = get_preset(name)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, p.in_channels, p.input_size, p.input_size, generator=g)


def _model(name: str) -> nn.Module:
    """A preset with BN statistics estimated on random images, as after training.

    With the initial statistics (mean 0, var 1) eval-mode BN does not normalise and activations
    grow layer after layer (logits ~1e3 on ImageNet presets), which no trained model has.
    """
    torch.manual_seed(0)
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for seed in (10, 11):
            model(_input(name, 4, seed))
    return model.eval()


@pytest.fixture(scope="module", params=PRESETS)
def preset_model(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    return request.param, _model(request.param)


def test_stages_one_after_another_equal_forward(preset_model: tuple[str, nn.Module]) -> None:
    name, model = preset_model
    x = _input(name, 3)
    with torch.no_grad():
        full = model(x)
        state = model.initial_state(x)
        staged = []
        for k in range(model.num_exits):
            state, logits = model.run_stage(k, state)
            staged.append(logits)
    assert len(full) == len(staged) == model.num_exits
    for a, b in zip(full, staged, strict=True):
        assert a.shape == (3, get_preset(name).num_classes)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_dropping_rows_between_stages_keeps_their_logits(
    preset_model: tuple[str, nn.Module],
) -> None:
    """Running a shrinking subset of the batch through later stages gives those rows' logits."""
    name, model = preset_model
    x = _input(name, 4, seed=1)
    with torch.no_grad():
        full = model(x)
        rows = torch.arange(4)
        state = model.initial_state(x)
        for k in range(model.num_exits):
            state, logits = model.run_stage(k, state)
            torch.testing.assert_close(logits, full[k][rows], atol=1e-5, rtol=0)
            if k == 0:
                keep = torch.tensor([True, False, True, True])  # boolean mask
            else:
                keep = torch.arange(len(rows))[len(rows) > 1 :]  # index: drop the first row
            state = select_rows(state, keep)
            rows = rows[keep]
            assert all(t.shape[0] == len(rows) for t in state)


def test_every_state_tensor_is_batch_first(preset_model: tuple[str, nn.Module]) -> None:
    name, model = preset_model
    x = _input(name, 2)
    with torch.no_grad():
        state = model.initial_state(x)
        for k in range(model.num_exits):
            state, _ = model.run_stage(k, state)
            assert all(t.shape[0] == 2 for t in state), f"stage {k + 1}"


@pytest.mark.parametrize("name", ["msdnet-cifar10", "ranet-cifar100"])
def test_channels_and_classes_are_parameters(name: str) -> None:
    model = create_model(name, in_channels=1, num_classes=7).eval()
    size = get_preset(name).input_size
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert all(o.shape == (2, 7) for o in out)


def test_msdnet_fmnist_accepts_unpadded_28px_input() -> None:
    model = create_model("msdnet-fmnist").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert [o.shape for o in out] == [(2, 10)] * model.num_exits


def test_he_normal_initialisation_reaches_every_conv() -> None:
    torch.manual_seed(0)
    model = create_model("msdnet-cifar100")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) > 50
    big = [c for c in convs if c.weight.numel() >= 4096]
    for conv in big:
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        expected = math.sqrt(2.0 / fan_out)
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.15)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)


def test_config_round_trips_through_create_model() -> None:
    model = create_model("ranet-cifar100")
    again = create_model(model.arch, **model.config_dict)
    assert again.config == model.config
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())


def test_msdnet_base_is_a_parameter() -> None:
    a = create_model("msdnet-imagenet-step6")
    b = create_model("msdnet-imagenet-step6", base=4)
    assert a.config.steps == (6, 6, 6, 6, 6)
    assert b.config.steps == (4, 6, 6, 6, 6)


def test_unknown_names_and_bad_arguments_are_clear() -> None:
    from exitwise.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="unknown model 'resnet'"):
        create_model("resnet")
    with pytest.raises(ValueError, match="step_mode"):
        create_model("msdnet-cifar10", step_mode="odd")
    with pytest.raises(TypeError):
        create_model("msdnet-cifar10", no_such_argument=1)


@pytest.mark.parametrize("name", ["msdnet-fmnist", "ranet-cifar100"])
def test_traced_stages_give_the_eager_logits_bit_for_bit(name: str) -> None:
    from exitwise.runtime import TorchStageRunner

    p = get_preset(name)
    eager = TorchStageRunner(_model(name), torch.device("cpu"))
    traced = TorchStageRunner(_model(name), torch.device("cpu"))
    assert traced.trace((p.in_channels, p.input_size, p.input_size))
    assert traced.provider == "torch-cpu-script"
    for batch in (1, 5):
        x = _input(name, batch, seed=3)
        a, b = eager.initial_state(x), traced.initial_state(x)
        for index in range(eager.num_exits):
            a, want = eager.run_stage(index, a)
            b, got = traced.run_stage(index, b)
            assert torch.equal(got, want)
            keep = torch.tensor([0])  # rows leave between stages: the graph takes any batch
            a, b = select_rows(a, keep), select_rows(b, keep)


def test_a_trace_that_differs_from_eager_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from exitwise.runtime import TorchStageRunner

    runner = TorchStageRunner(_model("msdnet-fmnist"), torch.device("cpu"))
    original = torch.jit.trace

    def off_by_a_bit(module: nn.Module, inputs: tuple[torch.Tensor, ...], **kw: object):  # type: ignore[no-untyped-def]
        graph = original(module, inputs, **kw)
        return lambda *state: (graph(*state)[0], graph(*state)[1] + 1e-6)

    monkeypatch.setattr(torch.jit, "trace", off_by_a_bit)
    assert not runner.trace((1, 32, 32))
    assert runner.provider == "torch-cpu"
