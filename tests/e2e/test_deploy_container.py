"""The image's contract without Docker: the files the Dockerfile copies, installed as a normal
(non-editable) copy, started with the runtime stage's ENV and exec-form ENTRYPOINT; the
HEALTHCHECK command turns healthy once ready, the server classifies, and SIGTERM drains it
(health check failing) and ends it gracefully well within compose's stop_grace_period.

This runs without a Docker engine; tests/e2e/test_docker_image.py builds and runs the real images
where one can run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy_helpers import DOCKER, REPO, env_of, load_yaml, read_dockerfile, stages
from tests.serving_helpers import Served, free_port, png, served_bundle

DOCKERFILE = DOCKER / "Dockerfile.cpu"


def _build_context_copy(dest: Path) -> Path:
    """The sources the build stage COPYs (not the whole repository), as in the image."""
    for ins in stages(read_dockerfile(DOCKERFILE))["sources"]:
        if ins.keyword != "COPY":
            continue
        *sources, _ = ins.args.split()  # COPY src... /src/...: the same paths under dest
        for src in sources:
            target = dest / src
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / src).is_dir():
                shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / src, target)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` of the build context into a target directory, non-editable and without
    dependencies (those are the test environment's: no network)."""
    root = tmp_path_factory.mktemp("image")
    src = _build_context_copy(root / "src")
    target = root / "venv"
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [*pip, *offline, "--target", str(target), str(src)],
        check=True,
        timeout=300,
        env={**os.environ, "PIP_FIND_LINKS": ""},
    )
    return target


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


class Container:
    """The runtime stage's ENV and ENTRYPOINT, with /opt/venv and /bundle mapped to test paths."""

    def __init__(self, installed: Path, bundle: Path, log: Path) -> None:
        runtime = stages(read_dockerfile(DOCKERFILE))["runtime"]
        self.entrypoint = json.loads(next(i.args for i in runtime if i.keyword == "ENTRYPOINT"))
        check = next(i.args for i in runtime if i.keyword == "HEALTHCHECK")
        self.healthcheck = json.loads(check.split(" CMD ", 1)[1])
        env = env_of(runtime)
        assert env.pop("EXITWISE_BUNDLE") == "/bundle"
        env.pop("PATH")
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EXITWISE_")},
            **env,
            "EXITWISE_BUNDLE": str(bundle),  # the volume
            # The test binds loopback on a free port (the image: 0.0.0.0:8000).
            "EXITWISE_HOST": "127.0.0.1",
            "EXITWISE_PORT": str(self.port),
            "EXITWISE_DRAIN_SECONDS": "3",
            "EXITWISE_TORCH_THREADS": "1",
            "PYTHONPATH": str(installed),  # what /opt/venv's site-packages would hold
        }
        self.installed = installed
        self.log = log

    def _path(self, word: str) -> str:
        if word == "/opt/venv/bin/python":
            return sys.executable
        if word.startswith("/opt/venv/bin/"):
            return str(self.installed / "bin" / word.rsplit("/", 1)[1])
        if word == "/opt/exitwise/healthcheck.py":
            return str(DOCKER / "healthcheck.py")
        return word

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as out:
            return subprocess.Popen(
                [self._path(w) for w in self.entrypoint],
                env=self.env,
                cwd=self.log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def healthy(self) -> bool:
        cmd = [self._path(w) for w in self.healthcheck]
        return subprocess.run(cmd, env=self.env, capture_output=True, timeout=30).returncode == 0


@pytest.fixture
def container(installed: Path, served: Served, tmp_path: Path) -> Iterator[Container]:
    yield Container(installed, served.path, tmp_path / "server.log")


def test_installed_copy_is_what_runs(container: Container) -> None:
    code = "import exitwise, serving, calibration; print(exitwise.__file__, serving.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=container.env,
        cwd=container.log.parent,  # as the server runs: not from the repository
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(Path(p).is_relative_to(container.installed) for p in out.split())


def test_entrypoint_healthcheck_and_sigterm(container: Container, served: Served) -> None:
    assert not container.healthy()  # nothing listening yet
    proc = container.start()
    try:
        deadline = time.monotonic() + 90
        while not container.healthy():
            assert proc.poll() is None, container.log.read_text()
            assert time.monotonic() < deadline, container.log.read_text()
            time.sleep(0.3)
        url = f"http://127.0.0.1:{container.port}"
        answer = httpx.post(
            f"{url}/v1/classify",
            content=png(served.test.pixels[0]),
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert answer.status_code == 200 and answer.json()["results"][0]["exit"] >= 1

        # `docker stop`: SIGTERM to PID 1 (the exec-form entrypoint), SIGKILL after the grace.
        grace = load_yaml(DOCKER / "compose.yaml")["services"]["exitwise-cpu"]["stop_grace_period"]
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # still serving during the drain ...
        assert not container.healthy()  # ... but no longer ready
        code = proc.wait(timeout=int(grace.rstrip("s")))
        # A drained stop is a success (serving.server keeps uvicorn from re-raising SIGTERM).
        log = container.log.read_text()
        assert code == 0, log
        assert "engine stopped" in log and "Application shutdown complete" in log
        assert time.monotonic() - sent >= 3  # the drain was honoured
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
