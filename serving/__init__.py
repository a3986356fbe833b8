"""Serving: the FastAPI app, its engine (batcher + torch / onnxruntime backends), REST v1 and
Open Inference Protocol v2 routes, metrics, errors and the HTTP load client."""
