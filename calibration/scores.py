"""What calibration keeps of a forward pass over a split: per exit, the max-softmax confidence
(float64), the predicted class and whether the label is among the five highest logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SplitScores:
    confidence: np.ndarray  # float64 [N, K]
    prediction: np.ndarray  # int64 [N, K]
    top5: np.ndarray  # bool [N, K]: label among the min(5, C) highest logits
    labels: np.ndarray  # int64 [N]
    logits: np.ndarray | None = None  # float32 [N, K, C], only when asked for

    def __post_init__(self) -> None:
        n, k = self.confidence.shape
        if self.prediction.shape != (n, k) or self.top5.shape != (n, k):
            raise ValueError("confidence, prediction and top5 must all be [N, K]")
        if self.labels.shape != (n,):
            raise ValueError("one label per image")
        if self.logits is not None and self.logits.shape[:2] != (n, k):
            raise ValueError("logits must be [N, K, C]")

    @property
    def images(self) -> int:
        return int(self.confidence.shape[0])

    @property
    def num_exits(self) -> int:
        return int(self.confidence.shape[1])

    @property
    def correct(self) -> np.ndarray:
        """bool [N, K]: top-1 prediction of each exit is the label."""
        out: np.ndarray = self.prediction == self.labels[:, None]
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "confidence": np.ascontiguousarray(self.confidence, dtype=np.float64),
            "prediction": np.ascontiguousarray(self.prediction, dtype=np.int64),
            "top5": np.ascontiguousarray(self.top5, dtype=np.uint8),
            "labels": np.ascontiguousarray(self.labels, dtype=np.int64),
        }
        if self.logits is not None:
            arrays["logits"] = np.ascontiguousarray(self.logits, dtype=np.float32)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SplitScores:
        logits = arrays.get("logits")
        return cls(
            confidence=np.asarray(arrays["confidence"], dtype=np.float64),
            prediction=np.asarray(arrays["prediction"], dtype=np.int64),
            top5=np.asarray(arrays["top5"]).astype(bool),
            labels=np.asarray(arrays["labels"], dtype=np.int64),
            logits=None if logits is None else np.asarray(logits, dtype=np.float32),
        )
