"""The weight-prediction network (WPN) of L2W-DEN and what turns its output into sample weights.

- Input, one row per sample: the per-exit losses (``loss``), the per-exit max-softmax
  confidences (``conf``) or both side by side (``both``); always detached from the backbone.
- ``Linear(K_in, H) + ReLU``, then ``num_layers - 1`` times ``Linear(H, H) + ReLU``, then
  ``Linear(H, K)`` and ``tanh``: raw scores ``r`` in (-1, 1) of shape ``[B, K]``.
- Normalisation ``w = 1 + epsilon * (r - mean)``, the mean taken over the whole matrix
  (``mat``), over each sample's exits (``col``: each sample's weights average to 1) or over the
  batch for each exit (``row``).
- The target exit distribution ``p_k = q^k / sum_j q^j`` with ``q = target_p_index / 20`` decides
  how many meta samples each exit gets (:func:`training.meta.allocate_meta_samples`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

INPUT_KINDS = ("loss", "conf", "both")
NORMS = ("mat", "col", "row")


class WeightPredictionNet(nn.Module):
    """``MLP_tanh`` of the seed: per-sample, per-exit raw weights in (-1, 1)."""

    def __init__(self, num_exits: int, input_kind: str, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"WPN input must be one of {INPUT_KINDS}, not {input_kind!r}")
        if num_layers < 1:
            raise ValueError("the WPN needs at least one hidden layer")
        self.num_exits = num_exits
        self.input_kind = input_kind
        width = 2 * num_exits if input_kind == "both" else num_exits
        layers: list[nn.Module] = [nn.Linear(width, hidden_size), nn.ReLU()]
        for _ in range(num_layers - 1):
            layers += [nn.Linear(hidden_size, hidden_size), nn.ReLU()]
        layers += [nn.Linear(hidden_size, num_exits), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    @property
    def needs_confidences(self) -> bool:
        return self.input_kind != "loss"

    def features(self, losses: Tensor, confidences: Tensor | None) -> Tensor:
        """The input rows for ``[B, K]`` losses and confidences (both detached here)."""
        if self.input_kind == "loss":
            x = losses
        elif confidences is None:
            raise ValueError(f"WPN input {self.input_kind!r} needs the confidences")
        elif self.input_kind == "conf":
            x = confidences
        else:
            x = torch.cat([losses, confidences], dim=1)
        # float64 in gradient checks, float32 otherwise
        return x.detach().to(next(self.parameters()).dtype)

    def forward(self, losses: Tensor, confidences: Tensor | None = None) -> Tensor:
        out: Tensor = self.net(self.features(losses, confidences))
        return out


def normalize_weights(raw: Tensor, norm: str, epsilon: float) -> Tensor:
    """``1 + epsilon * (raw - mean)`` with the mean of ``norm`` (``mat``, ``col`` or ``row``)."""
    if norm == "mat":
        centred = raw - raw.mean()
    elif norm == "col":
        centred = raw - raw.mean(dim=1, keepdim=True)
    elif norm == "row":
        centred = raw - raw.mean(dim=0, keepdim=True)
    else:
        raise ValueError(f"normalisation must be one of {NORMS}, not {norm!r}")
    return 1.0 + epsilon * centred


def target_exit_distribution(target_p_index: int, num_exits: int) -> Tensor:
    """``p_k = q^k / sum_j q^j`` for k = 1..K, ``q = target_p_index / 20`` (float64)."""
    if target_p_index < 1:
        raise ValueError("target_p_index must be at least 1")
    q = target_p_index / 20.0
    powers = torch.tensor([q**k for k in range(1, num_exits + 1)], dtype=torch.float64)
    return powers / powers.sum()
