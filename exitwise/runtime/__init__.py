"""The staged early-exit runtime: what the server runs, calibration simulates and exports benchmark.

- :class:`StageRunner`: runs a network one stage at a time on one device (protocol).
- :class:`TorchStageRunner`: PyTorch eager on CPU or CUDA; the onnxruntime runner lives in
  ``exports.runtime``.
- :func:`judge_stage`: the exit rule (:func:`exitwise.policy.stops_here`) applied to one stage's
  logits, each row with its own thresholds and cap.
- :func:`run_early_exit`: one batch through the stages, really dropping the rows that exit.
"""

from .early_exit import BatchOutcome, StageVerdict, judge_stage, run_early_exit, top_k_of
from .protocol import StageRunner
from .torch_runner import Precision, TorchStageRunner, load_torch_runner

__all__ = [
    "BatchOutcome",
    "Precision",
    "StageRunner",
    "StageVerdict",
    "TorchStageRunner",
    "judge_stage",
    "load_torch_runner",
    "run_early_exit",
    "top_k_of",
]
