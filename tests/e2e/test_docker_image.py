"""The real images, built and run by a Docker engine, with no image registry anywhere.

Both images are built with ``scripts/docker-build.sh`` on the Debian base image, one by each install
path: the CPU image offline from a wheelhouse filled on this host, the GPU image from the index
with this host's pip settings as BuildKit secrets. Docker's layer cache makes a second run take
seconds (about 30 s per image after a code change). The CPU image runs as deployed (its own
non-root user, read-only root file system, the tiny bundle mounted read-only) and must: turn
healthy through its own HEALTHCHECK, classify real images at two budgets exactly as the same
bundle served outside the container, export the documented metrics, and on ``docker stop`` finish
the requests in flight and exit 0. The GPU image, on a machine without a GPU, refuses
``--require-gpu`` in one line and serves on the CPU with ``--device auto``.

Skipped, with the reason, where no Docker engine can run (no docker.io, not root and no engine).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.docker_helpers import (
    Container,
    Engine,
    build_image,
    cannot_build,
    readable_copy,
    run_container,
    start_engine,
    stop_daemon,
)
from tests.serving_helpers import (
    Served,
    ServerProcess,
    assert_documented_metrics_exported,
    free_port,
    png,
    running_server,
    served_bundle,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

N_IMAGES = 24
DRAIN_S = 3.0
UID = "10001"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    found, reason = start_engine(log)
    if found is None:
        pytest.skip(f"no Docker engine can run here: {reason}")
    why = cannot_build(found)
    if why:
        if found.daemon is not None:
            stop_daemon(found.daemon)
        pytest.skip(why)
    try:
        yield found
    finally:
        found.remove_containers()
        if found.daemon is not None:  # started for these tests: stopped with them
            stop_daemon(found.daemon)


def _image(
    engine: Engine, variant: str, packages: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    log = tmp_path_factory.mktemp(f"build-{variant}") / "build.log"
    try:
        return build_image(engine, variant, packages, log)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="module")
def cpu_image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _image(engine, "cpu", "wheelhouse", tmp_path_factory)


@pytest.fixture(scope="module")
def gpu_image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _image(engine, "gpu", "index", tmp_path_factory)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return readable_copy(served.path, tmp_path_factory.mktemp("volume") / "bundle")


@pytest.fixture(scope="module")
def outside(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The same bundle served by ``exitwise serve`` on this machine, outside any container."""
    log = tmp_path_factory.mktemp("outside") / "server.log"
    yield from running_server(served.path, log, env={"EXITWISE_TORCH_THREADS": "1"})


@pytest.fixture(scope="module")
def cpu_container(engine: Engine, cpu_image: str, bundle: Path) -> Iterator[Container]:
    env = {"EXITWISE_TORCH_THREADS": "1", "EXITWISE_DRAIN_SECONDS": str(DRAIN_S)}
    container = run_container(engine, cpu_image, bundle, free_port(), env)
    try:
        container.wait_healthy()
        yield container
    finally:
        engine.run("rm", "-f", container.name, check=False)


def _budgets(served: Served) -> list[float]:
    """The cheapest and the most expensive operating point of the test calibration."""
    points = served.bundle.calibration().operating_points
    return [points[0].expected_mflops, points[-1].expected_mflops]


def _classify(url: str, served: Served, budget: float, n: int = N_IMAGES) -> dict[str, Any]:
    files = [
        ("file", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(served.test.pixels[:n])
    ]
    r = httpx.post(f"{url}/v1/classify", files=files, params={"budget_mflops": budget}, timeout=60)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _answers(body: dict[str, Any]) -> list[tuple[int, int]]:
    return [(r["exit"], r["class_id"]) for r in body["results"]]


def test_cpu_image_runs_as_deployed(engine: Engine, cpu_container: Container) -> None:
    info = engine.inspect(cpu_container.name)
    assert info["Config"]["User"] == f"{UID}:{UID}"
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    (volume,) = [m for m in info["Mounts"] if m["Destination"] == "/bundle"]
    assert volume["RW"] is False
    # PID 1 is the server itself (exec-form ENTRYPOINT), running as the image's user.
    status = engine.run("exec", cpu_container.name, "cat", "/proc/1/status")
    assert re.search(rf"^Uid:\s+{UID}\s", status, re.M), status
    cmdline = engine.run("exec", cpu_container.name, "cat", "/proc/1/cmdline").split("\0")
    assert cmdline[1:3] == ["/opt/venv/bin/exitwise", "serve"], cmdline
    # The image holds the installed copy only: no sources, no wheelhouse, no pip cache.
    leftovers = engine.run(
        "exec", cpu_container.name, "sh", "-c",
        "ls -A /src /tmp/build /root/.cache /wheelhouse 2>/dev/null; "
        "/opt/venv/bin/python -c 'import exitwise; print(exitwise.__file__)'",
    )  # fmt: skip
    assert leftovers.strip().startswith("/opt/venv/lib/python3"), leftovers
    assert httpx.get(f"{cpu_container.url}/readyz", timeout=5).status_code == 200


def test_classifies_as_the_server_outside(
    cpu_container: Container, outside: ServerProcess, served: Served
) -> None:
    points = []
    for budget in _budgets(served):
        inside = _classify(cpu_container.url, served, budget)
        there = _classify(outside.url, served, budget)
        assert _answers(inside) == _answers(there)
        assert inside["operating_point"] == there["operating_point"]
        points.append(inside["operating_point"]["name"])
    assert points[0] != points[1]  # two budgets, two operating points
    assert len({e for e, _ in _answers(inside)}) > 1  # images left at different exits


def test_metrics_has_the_documented_series(cpu_container: Container, served: Served) -> None:
    _classify(cpu_container.url, served, _budgets(served)[0], n=4)
    r = httpx.get(f"{cpu_container.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert_documented_metrics_exported(r.text)
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    info = families["exitwise_model_info"].samples[0].labels
    assert info["device"] == "cpu" and info["backend"] == "torch"


def test_docker_stop_drains_and_exits_0(
    engine: Engine, cpu_container: Container, served: Served
) -> None:
    """Last of the CPU tests: it stops the module's container."""
    image = png(served.test.pixels[5])
    results: list[httpx.Response | Exception] = []

    def slow_body() -> Iterator[bytes]:  # the upload takes ~2.5 s, well past the SIGTERM
        step = len(image) // 5 + 1
        for i in range(0, len(image), step):
            time.sleep(0.5)
            yield image[i : i + step]

    def slow_request() -> None:
        try:
            results.append(
                httpx.post(
                    f"{cpu_container.url}/v1/classify?max_exit=3",
                    content=slow_body(),
                    headers={"content-type": "image/png"},
                    timeout=60,
                )
            )
        except Exception as err:  # recorded, so the assertion below shows it
            results.append(err)

    clients = [threading.Thread(target=slow_request) for _ in range(3)]
    for t in clients:
        t.start()
    time.sleep(0.6)  # the three requests are in flight
    stopper = threading.Thread(
        target=engine.run, args=("stop", "--time", "45", cpu_container.name), kwargs={"timeout": 90}
    )
    stopper.start()
    time.sleep(0.5)
    # Draining: not ready any more, still answering.
    assert httpx.get(f"{cpu_container.url}/readyz", timeout=5).status_code == 503
    for t in clients:
        t.join(60)
    stopper.join(90)
    assert len(results) == 3
    for res in results:
        assert isinstance(res, httpx.Response), res
        assert res.status_code == 200 and res.json()["results"][0]["exit"] == 3
    state = cpu_container.state()
    logs = cpu_container.logs()
    assert not state["Running"] and state["ExitCode"] == 0, logs
    assert "engine stopped" in logs and "Application shutdown complete" in logs


# --- the GPU image, on a machine without a GPU --------------------------------------------------


def test_gpu_image_require_gpu_refuses_in_one_line(
    engine: Engine, gpu_image: str, bundle: Path
) -> None:
    if "nvidia" in engine.run("info", "--format", "{{json .Runtimes}}"):
        pytest.skip("this engine can give containers a GPU")
    done = subprocess.run(
        [engine.client, "run", "--rm", "--label", engine.label, "--network", "host",
         "-v", f"{bundle}:/bundle:ro", gpu_image, "--require-gpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "GPU" in lines[0] and "Traceback" not in done.stdout, done.stderr


def test_gpu_image_serves_on_the_cpu_with_device_auto(
    engine: Engine, gpu_image: str, bundle: Path, served: Served, outside: ServerProcess
) -> None:
    env = {"EXITWISE_TORCH_THREADS": "1", "EXITWISE_DRAIN_SECONDS": "0.5"}
    container = run_container(engine, gpu_image, bundle, free_port(), env, ["--device", "auto"])
    try:
        container.wait_healthy()
        model = httpx.get(f"{container.url}/v1/model", timeout=10).json()
        assert model["device"] == "cpu", model
        budget = _budgets(served)[-1]
        assert _answers(_classify(container.url, served, budget)) == _answers(
            _classify(outside.url, served, budget)
        )
        engine.run("stop", "--time", "45", container.name, timeout=90)
        assert container.state()["ExitCode"] == 0, container.logs()
    finally:
        engine.run("rm", "-f", container.name, check=False)
