"""Pictures the playground page shows from the bundle: sample images and the calibration curve.

- ``GET /v1/samples``: a handful of images from the bundle's held-out split (one per class
  first), with their true labels; ``GET /v1/samples/{i}.png`` serves one as a PNG. The bundle
  names its data set and held-out indices but does not carry the pixels, so the images are read
  from the data set (``EXITWISE_DATA_ROOT``, else the recipe's data root, else the data set's
  usual places) once, on the first request, in a worker thread. When the data set is not on this
  machine the list is empty and ``note`` says why, in one line: the page then simply offers no
  samples (a 404 here would be a console error in every browser that opens the page).
- ``GET /v1/model/curve.png``: ``calibration/curve.png`` from the bundle (accuracy against
  MFLOPs), 404 with a JSON error when the bundle was never calibrated.

Both sit behind the API key like the rest of ``/v1``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from PIL import Image

from exitwise.bundle import load_bundle
from exitwise.datasets import open_dataset
from exitwise.errors import ExitwiseError

from ..deps import Authorized
from ..errors import NotFoundError

log = logging.getLogger("exitwise.serving")

router = APIRouter(tags=["playground"])

SAMPLE_COUNT = 8
CURVE_FILE = Path("calibration") / "curve.png"


@dataclass(frozen=True)
class Sample:
    heldout_index: int  # position in the bundle's held-out split
    dataset_index: int  # index into the data set's split
    label: int
    class_name: str
    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class SampleSet:
    dataset: str | None
    split: str | None  # the data set split the held-out indices point into
    samples: list[Sample]
    note: str | None  # why there are none, in one line


def _encode_png(image: Any) -> tuple[bytes, int, int]:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue(), pil.width, pil.height


def pick(labels: np.ndarray, count: int) -> list[int]:
    """Positions of ``count`` images: the first of each class in held-out order, then the next
    ones, so a handful of samples shows as many classes as it can."""
    chosen: list[int] = []
    seen: set[int] = set()
    for i, label in enumerate(labels.tolist()):
        if label not in seen:
            seen.add(label)
            chosen.append(i)
            if len(chosen) == count:
                return chosen
    rest = [i for i in range(len(labels)) if i not in set(chosen)]
    return chosen + rest[: count - len(chosen)]


def _data_roots(recipe: dict[str, Any], configured: Path | None) -> list[Path | None]:
    if configured is not None:
        return [configured]
    data = recipe.get("data")
    root = data.get("root") if isinstance(data, dict) else None
    roots: list[Path | None] = []
    if isinstance(root, str) and Path(root).is_dir():
        roots.append(Path(root))
    roots.append(None)  # the data set's usual places
    return roots


def load_samples(bundle_dir: Path, data_root: Path | None, count: int = SAMPLE_COUNT) -> SampleSet:
    """Up to ``count`` held-out images of the bundle as PNG; never raises for a missing data set
    (the reason goes into ``note``)."""
    try:
        bundle = load_bundle(bundle_dir)
        manifest = bundle.manifest
        split = manifest.heldout
        if split is None:
            return SampleSet(manifest.dataset, None, [], "the bundle has no held-out split")
        indices = bundle.heldout_indices()
        error: ExitwiseError | None = None
        for root in _data_roots(manifest.training.recipe, data_root):
            try:
                # A folder data set: its record finds (and checks) the same files again.
                ds = open_dataset(split.dataset, split.source_split, root, source=manifest.folder)
                break
            except ExitwiseError as err:
                error = err
        else:
            assert error is not None
            # The reader's message names where it looked; the server's own knob is the env var.
            note = f"no sample images (the server reads EXITWISE_DATA_ROOT): {error}"
            return SampleSet(split.dataset, split.source_split, [], note)
        if len(indices) and int(indices.max()) >= len(ds):
            return SampleSet(
                split.dataset,
                split.source_split,
                [],
                f"no sample images: the held-out indices do not fit {split.dataset} "
                f"{split.source_split} ({len(ds)} images) in this data root",
            )
        labels = np.asarray(ds.labels)[indices]
        samples = []
        for pos in pick(labels, count):
            j = int(indices[pos])
            data, width, height = _encode_png(ds.image(j))
            label = int(labels[pos])
            name = manifest.class_names[label] if label < len(manifest.class_names) else str(label)
            samples.append(Sample(pos, j, label, name, data, width, height))
        return SampleSet(split.dataset, split.source_split, samples, None)
    except ExitwiseError as err:
        return SampleSet(None, None, [], f"no sample images: {err}")


class SampleStore:
    """The app's samples, loaded once on first use (thread-safe)."""

    def __init__(self, bundle_dir: Path, data_root: Path | None) -> None:
        self.bundle_dir = bundle_dir
        self.data_root = data_root
        self._lock = threading.Lock()
        self._set: SampleSet | None = None

    def get(self) -> SampleSet:
        with self._lock:
            if self._set is None:
                self._set = load_samples(self.bundle_dir, self.data_root)
                if self._set.note:
                    log.info("playground: %s", self._set.note)
            return self._set


def _store(request: Request) -> SampleStore:
    store: SampleStore | None = getattr(request.app.state, "samples", None)
    if store is None:  # an app built without one: make it on first use
        settings = request.app.state.settings
        store = SampleStore(settings.bundle, settings.data_root)
        request.app.state.samples = store
    return store


@router.get("/v1/samples", dependencies=[Authorized])
async def samples(request: Request) -> dict[str, Any]:
    found = await asyncio.to_thread(_store(request).get)
    return {
        "dataset": found.dataset,
        "split": "heldout",
        "source_split": found.split,
        "samples": [
            {
                "index": i,
                "heldout_index": s.heldout_index,
                "dataset_index": s.dataset_index,
                "label": s.label,
                "class_name": s.class_name,
                "width": s.width,
                "height": s.height,
                "url": f"/v1/samples/{i}.png",
            }
            for i, s in enumerate(found.samples)
        ],
        "note": found.note,
    }


@router.get("/v1/samples/{index:int}.png", dependencies=[Authorized])
async def sample_png(request: Request, index: int) -> Response:
    found = await asyncio.to_thread(_store(request).get)
    if not 0 <= index < len(found.samples):
        raise NotFoundError(f"no sample {index}; there are {len(found.samples)} (GET /v1/samples)")
    return Response(
        found.samples[index].png,
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get("/v1/model/curve.png", dependencies=[Authorized])
async def calibration_curve(request: Request) -> FileResponse:
    path = request.app.state.settings.bundle / CURVE_FILE
    if not path.is_file():
        raise NotFoundError(
            f"this bundle has no calibration curve ({CURVE_FILE}); run `exitwise calibrate`"
        )
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})
