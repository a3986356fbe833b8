"""``export_bundle``: every stage to ONNX, checked against PyTorch, written as one directory.

Order of work: load and verify the bundle (weights sha256, calibration), load the parity images
(so a data problem shows before the slow export), export and check each stage, run the parity
check in onnxruntime, and only if it passes write ``onnx/manifest.json`` and publish the
directory. A failure at any step leaves the bundle as it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from exitwise import __version__
from exitwise.bundle import ONNX_DIR, Bundle, load_bundle, utc_now
from exitwise.fileio import sha256_bytes, to_json

from .errors import ExportError, ParityError
from .graphs import DEFAULT_OPSET, EXAMPLE_BATCH, EXPORTER_NAME, MIN_OPSET, export_stage
from .manifest import (
    ONNX_FORMAT_VERSION,
    ONNX_MANIFEST_FILE,
    Exporter,
    OnnxManifest,
    StageGraph,
    stage_file_name,
)
from .parity import (
    DEFAULT_PARITY_IMAGES,
    FP16_TARGETS,
    FP32_TARGETS,
    PARITY_BATCH,
    ParityTargets,
    check_parity,
    describe_failure,
    load_parity_images,
)
from .publish import publish, staging_directory
from .sessions import CPU, create_session, import_onnx, import_onnxruntime

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def export_bundle(
    bundle: Bundle | str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    data_root: str | os.PathLike[str] | None = None,
    parity_images: int = DEFAULT_PARITY_IMAGES,
    parity_batch_size: int = PARITY_BATCH,
    targets: ParityTargets | None = None,
    progress: Progress | None = None,
) -> OnnxManifest:
    """Export ``bundle`` into ``bundle/onnx/`` and return the manifest written there.

    Raises :class:`~exports.errors.ParityError` (nothing written) when the graphs miss the
    parity targets (:data:`~exports.parity.FP32_TARGETS`, or the looser
    :data:`~exports.parity.FP16_TARGETS` with ``fp16``).
    """
    say = progress or _quiet
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(Path(bundle))
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; use {MIN_OPSET} or later")
    if parity_images < 1 or parity_batch_size < 1:
        raise ExportError("the parity check needs at least one image and a positive batch size")
    onnx = import_onnx()
    ort = import_onnxruntime()
    targets = targets or (FP16_TARGETS if fp16 else FP32_TARGETS)
    started = time.perf_counter()

    model = bundle.load_model("cpu")  # verifies the weights' sha256
    calibration = bundle.calibration() if bundle.has_calibration else None
    spec = bundle.manifest.preprocessing
    images = load_parity_images(bundle, parity_images, data_root, note=say)

    target = bundle.path / ONNX_DIR
    with staging_directory(target) as staged:
        graphs: list[StageGraph] = []
        sessions = []
        example = [torch.randn(EXAMPLE_BATCH, spec.channels, spec.input_size, spec.input_size)]
        for index, stage in enumerate(model.stages):
            say(f"exporting stage {index + 1}/{model.num_exits}")
            exported, example = export_stage(stage, example, index=index, opset=opset, fp16=fp16)
            name = stage_file_name(index + 1)
            (staged / name).write_bytes(exported.graph)
            graphs.append(
                StageGraph(
                    exit=index + 1,
                    file=name,
                    sha256=sha256_bytes(exported.graph),
                    size_bytes=len(exported.graph),
                    inputs=exported.inputs,
                    outputs=exported.outputs,
                )
            )
            try:
                sessions.append(create_session(exported.graph, [CPU]))
            except Exception as err:
                raise ExportError(
                    f"stage {index + 1}: onnxruntime cannot load the exported graph: "
                    f"{str(err).strip().splitlines()[0]}"
                ) from err

        source = "held-out" if images.source == "heldout" else "random"
        say(f"checking parity on {len(images.pixels)} {source} images")
        parity = check_parity(
            model,
            sessions,
            graphs,
            images,
            spec,
            calibration,
            targets,
            provider=CPU,
            onnxruntime_version=str(ort.__version__),
            batch_size=parity_batch_size,
        )
        if not parity.passed:
            raise ParityError(
                f"parity check failed, nothing written: {describe_failure(parity)}"
                + (" (fp16)" if fp16 else "")
            )
        manifest = OnnxManifest(
            format_version=ONNX_FORMAT_VERSION,
            created=utc_now(),
            exitwise_version=__version__,
            bundle_name=bundle.name,
            arch=bundle.manifest.arch,
            num_classes=bundle.manifest.num_classes,
            weights_sha256=bundle.weights_sha256,
            exporter=Exporter(
                name=EXPORTER_NAME,
                torch=torch.__version__,
                onnx=str(onnx.__version__),
                onnxscript=_onnxscript_version(),
            ),
            opset=opset,
            fp16=fp16,
            stages=graphs,
            parity=parity,
        )
        (staged / ONNX_MANIFEST_FILE).write_text(to_json(manifest.model_dump(mode="json")))
        publish(staged, target)
    say(f"wrote {target} in {time.perf_counter() - started:.1f} s")
    return manifest


def _onnxscript_version() -> str | None:
    try:
        import onnxscript
    except ImportError:  # pragma: no cover - import_onnx() checked it
        return None
    return str(onnxscript.__version__)
