"""The cache of a split's scores inside the bundle: ``calibration/cache/<split>-<key>.safetensors``.

A cache file holds the arrays of :class:`SplitScores` and, in its metadata, the full key it was
made for: the cache format, the weights' sha256, the split (data set, source split, the held-out
indices' sha256 and a fingerprint of the images and labels), the preprocessing and the network's
shape. A file is used only when its stored key equals the key computed now and its arrays have
the expected shapes, so a cache made for other weights, other data or other preprocessing is
never used (the seed reused whatever logits file it found). Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as st_save

from exitwise.bundle import Bundle, utc_now
from exitwise.fileio import atomic_write_bytes

from .data import SplitData
from .scores import SplitScores

CACHE_DIR = Path("calibration") / "cache"
CACHE_VERSION = 1


def cache_key(bundle: Bundle, split: SplitData) -> dict[str, Any]:
    m = bundle.manifest
    return {
        "cache_version": CACHE_VERSION,
        "weights_sha256": m.weights.sha256,
        "split": split.name,
        "dataset": split.dataset,
        "source_split": split.source_split,
        "indices_sha256": split.indices_sha256,
        "data_fingerprint": split.fingerprint,
        "images": split.images,
        "preprocessing": m.preprocessing.model_dump(mode="json"),
        "num_exits": m.num_exits,
        "num_classes": m.num_classes,
    }


def _canonical(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def cache_path(bundle_path: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]
    return bundle_path / CACHE_DIR / f"{key['split']}-{digest}.safetensors"


def load_cached(
    bundle_path: Path, key: dict[str, Any], need_logits: bool = False
) -> tuple[SplitScores | None, str]:
    """The cached scores for ``key``, or ``None`` and why not."""
    path = cache_path(bundle_path, key)
    if not path.is_file():
        return None, "no cache"
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("key") != _canonical(key):
                return None, f"{path.name} was made for other weights, data or preprocessing"
            arrays = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        return None, f"{path.name} is unreadable ({err})"
    try:
        scores = SplitScores.from_arrays(arrays)
    except (KeyError, ValueError) as err:
        return None, f"{path.name} is incomplete ({err})"
    n, k = key["images"], key["num_exits"]
    if scores.confidence.shape != (n, k):
        return None, f"{path.name} has the wrong shape"
    if need_logits and scores.logits is None:
        return None, f"{path.name} has no logits (asked for with --keep-logits)"
    return scores, f"read from {path.relative_to(bundle_path)}"


def save_cached(
    bundle_path: Path, key: dict[str, Any], scores: SplitScores, info: dict[str, str]
) -> Path:
    """Write the cache for ``key`` (atomically) and remove stale caches of the same split."""
    path = cache_path(bundle_path, key)
    meta = {"key": _canonical(key), "created": utc_now(), **info}
    atomic_write_bytes(path, st_save(scores.to_arrays(), metadata=meta))
    for old in path.parent.glob(f"{key['split']}-*.safetensors"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def labels_match(scores: SplitScores, labels: np.ndarray) -> bool:
    return bool(np.array_equal(scores.labels, labels))
