"""One runtime: calibration's simulation and the served loop make the same decisions.

Calibration scores a split with every exit's confidence known in advance
(:func:`calibration.probabilities.compute_scores`) and simulates each operating point with
:func:`calibration.evaluate.evaluate_thresholds`. The server runs the network stage by stage and
really stops images (:func:`exitwise.runtime.run_early_exit`, inside the engine). Both must give
every image the same exit and the same class, at any batch size.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from calibration.evaluate import evaluate_thresholds
from calibration.probabilities import compute_scores
from exitwise.datasets import EvalImages, open_dataset
from exitwise.preprocess import normalize
from exitwise.runtime import load_torch_runner, run_early_exit
from serving.budget.resolve import BudgetResolver
from serving.engine import Engine
from serving.jobs import Ticket
from tests.serving_helpers import Served, served_bundle


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


def test_calibration_simulation_equals_the_served_loop(served: Served) -> None:
    bundle = served.bundle
    manifest = bundle.manifest
    view = EvalImages(
        open_dataset("fashion-mnist", "test", served.data_root), manifest.preprocessing
    )
    cpu = torch.device("cpu")
    scores = compute_scores(bundle.load_model(), view, device=cpu, batch_size=64, progress=False)
    x = normalize(torch.from_numpy(served.test.pixels), manifest.preprocessing)
    runner = load_torch_runner(bundle, cpu)
    resolver = BudgetResolver(manifest.exit_mflops, bundle.calibration())
    n, k = scores.confidence.shape
    assert n == len(x)
    checked = 0
    for point in resolver.points:
        thr = point.threshold_array()
        simulated = evaluate_thresholds(scores, thr, manifest.exit_mflops)
        want_class = scores.prediction[np.arange(n), simulated.exits]
        assert 0 < simulated.counts[0] < n, "the point should split the images between exits"
        # The runtime's loop, at batch sizes that put images in different company.
        for batch in (1, 7, n):
            exits, classes = [], []
            for s in range(0, n, batch):
                rows = min(batch, n - s)
                out = run_early_exit(
                    runner,
                    x[s : s + rows],
                    np.broadcast_to(thr, (rows, k)),
                    np.full(rows, k - 1, dtype=np.int64),
                )
                exits.append(out.exit_index)
                classes.append(out.class_id)
            np.testing.assert_array_equal(np.concatenate(exits), simulated.exits)
            np.testing.assert_array_equal(np.concatenate(classes), want_class)
        # The engine that serves requests, one image per request as clients send them.
        plan = resolver.resolve(budget_mflops=point.expected_mflops)
        served_exits = asyncio.run(_serve_one_by_one(runner, manifest.exit_mflops, x, plan))
        np.testing.assert_array_equal(served_exits, simulated.exits)
        checked += 1
    assert checked == len(resolver.points) >= 2


async def _serve_one_by_one(runner, exit_mflops, x, plan) -> np.ndarray:  # type: ignore[no-untyped-def]
    engine = Engine(runner, exit_mflops=list(exit_mflops), max_batch_size=16, max_wait_s=0.0)
    engine.start()
    try:
        now = time.monotonic()
        ticket = Ticket(plan, 0, now, now + 60)
        jobs = [engine.submit(ticket, x[i : i + 1]) for i in range(len(x))]
        outcomes = [await job.future for job in jobs]
    finally:
        engine.stop()
    return np.concatenate([o.exit for o in outcomes])
