"""Helpers for the tests that build and run the real images (tests/e2e/test_docker_image.py).

The Docker engine is used where it answers, or started for the test session where we may (root,
``dockerd`` installed) and stopped again at the end. Images are built by
``scripts/docker-build.sh`` (base image from Debian packages, wheelhouse, BuildKit) so that the
tests need no registry. Every container carries a label of its session and is removed at the end,
whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy_helpers import REPO

BASE_IMAGE = os.environ.get("BASE_IMAGE", "exitwise-base:bookworm")
# A cold build of the GPU image (3 GB of wheels, 5.7 GB of torch and CUDA libraries installed)
# takes 3 to 5 minutes here; far more means something hangs.
BUILD_TIMEOUT_S = 1500


def docker_client() -> str | None:
    """The docker client: $DOCKER, else Debian's /usr/bin/docker (a client without BuildKit
    may come first on PATH), else the one on PATH."""
    if os.environ.get("DOCKER"):
        return shutil.which(os.environ["DOCKER"])
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    return shutil.which("docker")


def answers(client: str) -> bool:
    try:
        done = subprocess.run(
            [client, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass
class Engine:
    """A Docker engine for the session; ``daemon`` is the dockerd this session started."""

    client: str
    daemon: subprocess.Popen[bytes] | None = None
    label: str = field(default_factory=lambda: f"exitwise-test={uuid.uuid4().hex[:12]}")

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = subprocess.run([self.client, *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def inspect(self, name: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.run("inspect", name))
        return data[0]

    def remove_containers(self) -> None:
        ids = self.run("ps", "-aq", "--filter", f"label={self.label}", check=False).split()
        if ids:
            self.run("rm", "-f", *ids, check=False)


def start_engine(log: Path) -> tuple[Engine | None, str]:
    """An engine that answers, or why there is none (the reason the docker tests skip)."""
    client = docker_client()
    if client is None:
        return None, "no docker client (Debian: apt-get install docker.io)"
    if answers(client):
        return Engine(client), ""
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.access(dockerd, os.X_OK):
        return None, f"no Docker engine answers {client}, and dockerd is not installed"
    if os.geteuid() != 0:
        return None, f"no Docker engine answers {client}, and starting dockerd needs root"
    with log.open("wb") as out:
        # Its own process group, so that stopping it can never reach the test process.
        daemon = subprocess.Popen(
            [dockerd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            return None, f"dockerd exited with {daemon.returncode}: {' '.join(tail)}"
        if answers(client):
            return Engine(client, daemon), ""
        time.sleep(0.5)
    stop_daemon(daemon)
    return None, "dockerd did not answer within 60 s"


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    """dockerd first (it stops its containerd), then whatever is left in its process group."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.pid, signal.SIGKILL)


def cannot_build(engine: Engine) -> str:
    """Why no image can be built here (empty when one can)."""
    if engine.run("image", "inspect", BASE_IMAGE, check=False):
        return ""
    if shutil.which("debootstrap") is None:
        return f"no base image {BASE_IMAGE}, and debootstrap is not installed to make one"
    if os.geteuid() != 0:
        return f"no base image {BASE_IMAGE}, and debootstrap needs root to make one"
    return ""


def build_image(engine: Engine, variant: str, packages: str, log: Path) -> str:
    """``PACKAGES=packages scripts/docker-build.sh VARIANT`` (layers cached by Docker between
    runs); the tag."""
    tag = f"exitwise:{variant}"
    env = {"DOCKER": engine.client, "TAG": tag, "BASE_IMAGE": BASE_IMAGE, "PACKAGES": packages}
    with log.open("wb") as out:
        done = subprocess.run(
            [str(REPO / "scripts" / "docker-build.sh"), variant],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            timeout=BUILD_TIMEOUT_S,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"scripts/docker-build.sh {variant} failed:\n{tail}")
    return tag


def readable_copy(src: Path, dest: Path) -> Path:
    """``src`` copied where the image's user (uid 10001) can read it: pytest's temporary
    folders are private to their owner."""
    shutil.copytree(src, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


@dataclass
class Container:
    engine: Engine
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.engine.inspect(self.name)["State"]
        return state

    def logs(self) -> str:
        done = subprocess.run(
            [self.engine.client, "logs", self.name], capture_output=True, text=True, timeout=60
        )
        return done.stdout + done.stderr

    def wait_healthy(self, timeout: float = 120) -> float:
        """Seconds until Docker's health check reports healthy."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            state = self.state()
            if not state["Running"]:
                raise RuntimeError(f"{self.name} exited {state['ExitCode']}:\n{self.logs()}")
            if state.get("Health", {}).get("Status") == "healthy":
                return time.monotonic() - start
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not healthy after {timeout} s:\n{self.logs()}")


def run_container(
    engine: Engine,
    image: str,
    bundle: Path,
    port: int,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> Container:
    """The image as deployed: its own user, a read-only root file system with a tmpfs /tmp
    (uploads spool there), the bundle mounted read-only. Host network (this machine's Docker
    has no bridge NAT), so the server's port is set with EXITWISE_PORT, as documented. The
    health check runs every second instead of every 10 s (the command is the image's)."""
    name = f"exitwise-test-{uuid.uuid4().hex[:10]}"
    env = {"EXITWISE_PORT": str(port), **(env or {})}
    cmd = ["run", "-d", "--name", name, "--label", engine.label, "--network", "host"]
    cmd += ["--read-only", "--tmpfs", "/tmp", "--health-interval", "1s"]
    cmd += ["-v", f"{bundle}:/bundle:ro"]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    engine.run(*cmd, image, *args)
    return Container(engine, name, port)
