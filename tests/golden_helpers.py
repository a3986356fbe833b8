"""Golden responses: a bundle whose answers are exact on every machine, and the requests sent.

Every weight of the network is zero, so each exit's logits are its classifier's bias alone,
whatever the image. The biases are 0 for one class and -inf for the others: the max-softmax
confidence is exactly 1.0 and every other probability exactly 0.0 (exp(0) and exp(-inf) are
exact in any maths library), so response bytes do not depend on the CPU's floating point.
Images still go through decoding and the engine; budgets and caps choose the exit, and each exit
names another class.

``tests/golden/responses.json`` holds what the server answered to :func:`requests`. It was first
written by the server as it stood before the request path was made lean, and the lean path gave
it byte for byte. Since then, on purpose: budget control added two keys to each plan's
description (``controlled``, ``control_mflops``); deadlines and degradation added
``degraded_from`` to it, ``stopped`` to each v1 result and the ``stop_reason`` output to v2; the
known parameters an error message lists grew; ``deadline_policy`` joined them, and v2 requests
with an unknown parameter are refused as v1's are (a new request here). Each time the file was
written again.
Regenerate it (``python -m tests.golden_helpers OUT``) only when a response is meant to change,
and say what changed.
"""

from __future__ import annotations

import base64
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from exitwise.bundle import (
    Bundle,
    Calibration,
    OperatingPoint,
    SplitResult,
    load_bundle,
    save_bundle,
    write_calibration,
)
from exitwise.datasets import default_preprocessing
from exitwise.models import create_model

GOLDEN = Path(__file__).parent / "golden" / "responses.json"
PRESET = "msdnet-fmnist"


def golden_bundle(path: Path) -> Bundle:
    """The exact bundle (see the module docstring), calibrated with two operating points."""
    model = create_model(PRESET)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        for k, stage in enumerate(model.stages):
            head = [m for m in stage.modules() if isinstance(m, torch.nn.Linear)][-1]
            head.bias.fill_(-math.inf)
            head.bias[(3 * k + 1) % head.bias.numel()] = 0.0
    spec = default_preprocessing("fashion-mnist")
    names = [f"class-{i}" for i in range(10)]
    bundle = save_bundle(
        path, model, name="golden", class_names=names, preprocessing=spec, preset=PRESET
    )
    k = bundle.manifest.num_exits
    costs = bundle.manifest.exit_mflops

    def point(name: str, exit_index: int, target: float) -> OperatingPoint:
        thresholds: list[float | None] = [None] * k  # None: nobody exits there
        if exit_index < k - 1:
            thresholds[exit_index] = 0.5
        fractions = [0.0] * k
        fractions[exit_index] = 1.0
        result = SplitResult(
            accuracy=50.0, mflops=costs[exit_index], exit_fractions=fractions, images=100
        )
        return OperatingPoint(
            name=name, target_mflops=target, q=1.0, thresholds=thresholds, heldout=result
        )

    calibration = Calibration(
        weights_sha256=bundle.weights_sha256,
        heldout_sha256="0" * 64,
        created="2026-01-01T00:00:00Z",
        exit_mflops=costs,
        operating_points=[point("cheap", 0, costs[0] + 0.5), point("dear", 1, costs[1] + 0.5)],
        default_operating_point="dear",
    )
    write_calibration(bundle, calibration)
    return load_bundle(path)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _v2_json(inputs: list[dict[str, Any]], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "golden", "inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    return body


def requests() -> list[dict[str, Any]]:
    """The requests, as keyword arguments of a ``TestClient`` call plus a name."""
    png = {"content-type": "image/png"}
    images = [_png(s) for s in range(3)]
    tensor = np.zeros((2, 1, 32, 32), dtype=np.float32)
    v2 = "/v2/models/golden/infer"
    return [
        {"name": "v1 raw, default plan", "method": "POST", "url": "/v1/classify?top_k=1",
         "content": images[0], "headers": png},
        {"name": "v1 raw, top_k 1, max_exit 3", "method": "POST",
         "url": "/v1/classify?top_k=1&max_exit=3", "content": images[1], "headers": png},
        {"name": "v1 multipart, budget", "method": "POST", "url": "/v1/classify",
         "files": [("image", ("a.png", images[0], "image/png")),
                   ("image", ("b.png", images[2], "image/png"))],
         "data": {"budget_mflops": "4", "top_k": "0"}},
        {"name": "v1 budget and cap", "method": "POST",
         "url": "/v1/classify?budget_mflops=100&max_exit=1&top_k=1", "content": images[2],
         "headers": png},
        {"name": "v1 bad image", "method": "POST", "url": "/v1/classify",
         "content": b"not an image", "headers": png},
        {"name": "v1 budget too low", "method": "POST", "url": "/v1/classify?budget_mflops=0.01",
         "content": images[0], "headers": png},
        {"name": "v1 unknown parameter", "method": "POST", "url": "/v1/classify?speed=9",
         "content": images[0], "headers": png},
        {"name": "v1 media type", "method": "POST", "url": "/v1/classify", "content": b"{}",
         "headers": {"content-type": "application/json"}},
        {"name": "v2 bytes, json out", "method": "POST", "url": v2,
         "json": _v2_json([{"name": "image", "datatype": "BYTES", "shape": [2],
                            "data": [base64.b64encode(i).decode() for i in images[:2]]}],
                          max_exit=2)},
        {"name": "v2 tensor, binary out", "method": "POST", "url": v2,
         "json": _v2_json([{"name": "input", "datatype": "FP32", "shape": [2, 1, 32, 32],
                            "data": tensor.ravel().tolist()}],
                          budget_mflops=100.0, binary_data_output=True)},
        {"name": "v2 wrong datatype", "method": "POST", "url": v2,
         "json": _v2_json([{"name": "input", "datatype": "INT8", "shape": [1],
                            "data": [1]}])},
        {"name": "v2 unknown parameter", "method": "POST", "url": v2,
         "json": _v2_json([{"name": "input", "datatype": "FP32", "shape": [2, 1, 32, 32],
                            "data": tensor.ravel().tolist()}], budget=5)},
    ]  # fmt: skip


def answer(client: Any) -> list[dict[str, Any]]:
    """Send :func:`requests` and keep what must not change: status, type and body bytes."""
    out = []
    for req in requests():
        kwargs = {k: v for k, v in req.items() if k not in ("name", "method", "url")}
        r = client.request(req["method"], req["url"], **kwargs)
        out.append(
            {
                "name": req["name"],
                "status": r.status_code,
                "content_type": r.headers.get("content-type"),
                "inference_header_length": r.headers.get("inference-header-content-length"),
                "body": base64.b64encode(r.content).decode(),
            }
        )
    return out


def main(out: str) -> None:
    """Write the golden file from the code on ``sys.path`` (a checkout of the reference)."""
    import tempfile

    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from serving.app import create_app
    from serving.settings import Settings

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = golden_bundle(Path(tmp) / "bundle")
        settings = Settings(bundle=bundle.path, log_level="warning")  # type: ignore[call-arg]
        with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
            answers = answer(client)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(answers, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
