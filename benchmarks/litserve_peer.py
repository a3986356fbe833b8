"""The peer in the benchmark: LitServe serving a bundle's full network with its own batching.

What a generic model server does with the same network, as a user would set it up: JSON with a
base64 PNG per request (``POST /predict``), LitServe's dynamic batching (32 images or 2 ms by
default), the bundle's own preprocessing and every stage run, answering the last exit's class.
For ``exitwise bench peer`` only; LitServe is a benchmark extra (``pip install
'exitwise[peer]'``), never a dependency of the server.

    python -m benchmarks.litserve_peer BUNDLE --port 8001 [--max-batch-size 32]
"""

from __future__ import annotations

import argparse
import base64
from typing import Any

import litserve as ls
import numpy as np
import torch

from exitwise.bundle import load_bundle
from exitwise.policy import confidence_and_prediction
from exitwise.preprocess import Preprocessing, decode_image, normalize, to_uint8


class FullNetwork(ls.LitAPI):  # type: ignore[misc]
    """Module level: LitServe pickles the API into its worker processes."""

    def __init__(self, bundle_dir: str, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bundle_dir = bundle_dir
        self.threads = threads

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        bundle = load_bundle(self.bundle_dir)
        self.model = bundle.load_model("cpu").eval()
        self.spec: Preprocessing = bundle.manifest.preprocessing
        self.names = list(bundle.manifest.class_names)

    # No annotation on ``request`` nor on encode_response's result: LitServe reads them to build
    # its endpoint, and without them it parses the JSON body itself, as users usually let it.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        img = decode_image(base64.b64decode(request["image"]))
        try:
            return to_uint8(img, self.spec)
        finally:
            img.close()

    def batch(self, inputs: list[np.ndarray]) -> torch.Tensor:
        return normalize(torch.from_numpy(np.stack(inputs)), self.spec)

    def predict(self, x: torch.Tensor) -> list[tuple[int, float]]:
        with torch.inference_mode():
            logits = self.model(x)[-1]
        conf, pred = confidence_and_prediction(logits)
        return list(zip(pred.tolist(), conf.tolist(), strict=True))

    def unbatch(self, output: list[tuple[int, float]]) -> list[tuple[int, float]]:
        return output

    def encode_response(self, output: tuple[int, float]):  # type: ignore[no-untyped-def]
        class_id, confidence = output
        return {"class_id": class_id, "class_name": self.names[class_id], "confidence": confidence}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    api = FullNetwork(
        args.bundle,
        args.torch_threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
