"""One ONNX graph per stage: the stage as a module of separate tensors, exported and checked.

Stage k of an early-exit network maps its incoming state (a flat list of batch-first tensors;
stage 1 gets ``[images]``) to ``(new state, logits)``. ONNX graphs take and return separate
tensors, so :class:`StageModule` unpacks the list: inputs ``state_in_0..``, outputs
``state_out_0..`` then ``logits``, each with the symbolic batch axis ``batch``.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript). The TorchScript
exporter (``dynamo=False``) is faster but drops graph inputs a stage does not read (RANet's
stage that starts a new scale flow ignores the previous flow's last feature), which breaks the
"stage k's outputs are stage k+1's inputs" contract; the dynamo exporter keeps every input,
records exact channel and spatial sizes in the graph, and handles the bilinear resizes,
concatenations and in-place ReLUs of both architectures.

fp16: the stage runs in half precision; stage 1 still takes float32 images (cast inside the
graph) and every stage still returns float32 logits, so only the state between stages and the
arithmetic are fp16.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ExportError
from .manifest import BATCH_AXIS, LOGITS_NAME, TensorSpec, state_in_name, state_out_name
from .sessions import import_onnx

EXPORTER_NAME = "torch.onnx.export(dynamo=True)"
DEFAULT_OPSET = 18  # the opset torch's exporter writes natively; others are converted
MIN_OPSET = 17
# Batch size of the example inputs: torch.export specialises sizes 0 and 1, so the example must
# be larger for the batch axis to stay symbolic.
EXAMPLE_BATCH = 2

# Loggers of the exporter's machinery: they report every rewrite at INFO, which a server or CLI
# that logs at INFO would print by the hundred.
_CHATTY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._dynamo",
    "torch.fx",
    "onnxscript",
    "onnx_ir",
)

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16"}
_ONNX_ELEM = {"float32": 1, "float16": 10}  # onnx.TensorProto.FLOAT / FLOAT16


class StageModule(nn.Module):
    """``forward(*state) -> (*new_state, logits)`` for one stage."""

    def __init__(self, stage: nn.Module, *, fp16: bool, first: bool) -> None:
        super().__init__()
        self.stage = copy.deepcopy(stage).half() if fp16 else stage
        self.fp16 = fp16
        self.first = first

    def forward(self, *state: Tensor) -> tuple[Tensor, ...]:
        inputs = list(state)
        if self.fp16 and self.first:
            inputs = [inputs[0].half()]
        new_state, logits = self.stage(inputs)
        return (*new_state, logits.float())


@dataclass(frozen=True)
class ExportedStage:
    graph: bytes  # serialized ONNX model
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        # It also reports progress on stdout and warns about its internals; the graph is
        # checked below, so none of that is the user's business.
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def tensor_specs(names: Sequence[str], tensors: Sequence[Tensor]) -> list[TensorSpec]:
    return [
        TensorSpec.model_validate(
            {"name": n, "dtype": _DTYPE_NAMES[t.dtype], "shape": [BATCH_AXIS, *t.shape[1:]]}
        )
        for n, t in zip(names, tensors, strict=True)
    ]


def export_stage(
    stage: nn.Module, example: Sequence[Tensor], *, index: int, opset: int, fp16: bool
) -> tuple[ExportedStage, list[Tensor]]:
    """Export stage ``index`` (0-based) given an example of its incoming state.

    Returns the checked graph and an example of the state it passes on (for the next stage).
    """
    onnx = import_onnx()
    module = StageModule(stage, fp16=fp16, first=index == 0).eval()
    example = [t.detach() for t in example]
    with torch.no_grad():
        outputs = module(*example)
    in_names = [state_in_name(i) for i in range(len(example))]
    out_names = [state_out_name(i) for i in range(len(outputs) - 1)] + [LOGITS_NAME]
    batch = torch.export.Dim(BATCH_AXIS)
    where = f"stage {index + 1}"
    try:
        with torch.no_grad(), _quiet_exporter():
            program: Any = torch.onnx.export(
                module,
                tuple(example),
                dynamo=True,
                input_names=in_names,
                output_names=out_names,
                opset_version=opset,
                dynamic_shapes=(tuple({0: batch} for _ in example),),
                optimize=True,
                verify=False,
                report=False,
                verbose=False,
                external_data=False,
            )
    except Exception as err:  # the exporter raises many types; all mean "could not export"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{where} could not be exported to ONNX: {first}") from err
    proto = program.model_proto
    in_specs = tensor_specs(in_names, example)
    out_specs = tensor_specs(out_names, outputs)
    actual_opset = _default_opset(proto)
    if actual_opset != opset:
        raise ExportError(
            f"{where}: the exporter wrote opset {actual_opset}, not the {opset} asked for "
            f"(conversion to opset {opset} is not supported for this graph); try --opset "
            f"{DEFAULT_OPSET}"
        )
    _check_signature(proto, in_specs, out_specs, where)
    graph = proto.SerializeToString()
    try:
        onnx.checker.check_model(graph, full_check=True)
    except Exception as err:
        raise ExportError(f"{where}: the ONNX checker refused the graph: {err}") from err
    next_example = [t.detach() for t in outputs[:-1]]
    return ExportedStage(graph, in_specs, out_specs, actual_opset), next_example


def _default_opset(proto: Any) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("the exported graph imports no default ONNX opset")


def _check_signature(
    proto: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], where: str
) -> None:
    """The graph's inputs and outputs are exactly the specs: names, order, dtypes, shapes."""
    for kind, values, specs in (
        ("inputs", proto.graph.input, inputs),
        ("outputs", proto.graph.output, outputs),
    ):
        names = [v.name for v in values]
        if names != [s.name for s in specs]:
            raise ExportError(
                f"{where}: graph {kind} are {names}, expected {[s.name for s in specs]}"
            )
        for value, spec in zip(values, specs, strict=True):
            tensor = value.type.tensor_type
            if tensor.elem_type != _ONNX_ELEM[spec.dtype]:
                raise ExportError(f"{where}: {spec.name} has ONNX element type {tensor.elem_type}")
            dims = list(tensor.shape.dim)
            if len(dims) != len(spec.shape) or dims[0].HasField("dim_value"):
                raise ExportError(
                    f"{where}: {spec.name} does not have a symbolic batch axis and "
                    f"{len(spec.shape)} dimensions"
                )
            fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
            if fixed != list(spec.feature_shape):
                raise ExportError(
                    f"{where}: {spec.name} has shape {fixed} in the graph, expected "
                    f"{list(spec.feature_shape)}"
                )
