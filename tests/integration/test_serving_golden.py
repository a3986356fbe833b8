"""The request path answers byte for byte what the golden file says.

``tests/golden/responses.json`` was first written by the server as it stood before the lean
request path (continuous batching, worker-side decoding, routes without dependency injection),
from a bundle whose answers are exact on any CPU (see ``tests/golden_helpers.py`` for what has
changed in it since, on purpose). REST v1 and the Open Inference Protocol v2, successes and
errors, JSON and binary tensors, with decoding in the engine's worker and in the pool.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from serving.app import create_app
from serving.settings import Settings
from tests.golden_helpers import GOLDEN, answer, golden_bundle


@pytest.mark.parametrize("decode_threads", [0, 2])
def test_responses_are_byte_for_byte_the_golden_ones(tmp_path: Path, decode_threads: int) -> None:
    bundle = golden_bundle(tmp_path / "bundle")
    settings = Settings(bundle=bundle.path, decode_threads=decode_threads)  # type: ignore[call-arg]
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        got = answer(client)
    want = json.loads(GOLDEN.read_text())
    assert [g["name"] for g in got] == [w["name"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g == w, g["name"]
