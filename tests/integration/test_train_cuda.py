"""The CUDA paths: autocast (bf16, fp16 with loss scaling), channels_last, a whole run.

Skipped without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exitwise.bundle import load_bundle
from training.meta import MetaBatch, SGDHyper, exit_confidences, meta_gradient, per_exit_losses
from training.recipe_io import build_recipe
from training.trainer import train
from training.wpn import WeightPredictionNet, target_exit_distribution

from ..training_helpers import (
    fake_fmnist,
    one_thread,  # noqa: F401  (autouse: one thread)
    tiny_model,
    tiny_recipe,
)

pytestmark = pytest.mark.cuda


def test_forward_mode_equals_double_backward_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare in full fp32
    torch.manual_seed(0)
    model = tiny_model().cuda().train()
    wpn = WeightPredictionNet(4, "loss", 16, 1).cuda()
    x, y = torch.randn(32, 1, 32, 32, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    buffers = {n: 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    grads = []
    for mode in ("forward", "double-backward"):
        logits = model(x[:16])
        losses = per_exit_losses(logits, y[:16])
        batch = MetaBatch(losses, exit_confidences(logits), x[:16], y[:16], x[16:], y[16:])
        target = target_exit_distribution(15, 4)
        hyper = SGDHyper(0.1, 0.9, 1e-4)
        result = meta_gradient(
            model, wpn, hyper, buffers, batch, norm="col", epsilon=0.8, target=target, mode=mode
        )
        grads.append(torch.cat([g.flatten() for g in result.grads]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_whole_run_on_cuda(tmp_path: Path, precision: str) -> None:
    data = fake_fmnist(tmp_path / "data", n_train=228, n_test=40)
    recipe = build_recipe(
        tiny_recipe(data),
        ["device=cuda", f"precision={precision}", "channels_last=true", "epochs=2"],
    )
    result = train(recipe, tmp_path / "run")
    bundle = load_bundle(tmp_path / "run")
    bundle.verify()
    assert bundle.manifest.training.model_dump()["device"] == "cuda"
    assert len(result.heldout_accuracy) == 4
    model = bundle.load_model("cuda")
    assert all(torch.isfinite(p).all() for p in model.parameters())
