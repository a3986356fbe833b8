"""docker/healthcheck.py, run as the image runs it (``python -I``), against a stand-in server that
answers /readyz with a chosen status."""

from __future__ import annotations

import http.server
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import ClassVar

import pytest

from tests.deploy_helpers import DOCKER

SCRIPT = DOCKER / "healthcheck.py"


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[tuple[http.server.HTTPServer, type[_Readyz]]]:
    handler = type("Handler", (_Readyz,), {"status": 200, "paths": []})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _run(port: int, host: str = "0.0.0.0") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXITWISE_HOST": host, "EXITWISE_PORT": str(port)}
    # A proxy in the environment must not be used for loopback.
    env["http_proxy"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1), (500, 1)])
def test_exit_code_follows_readyz(stand_in, status: int, code: int) -> None:
    server, handler = stand_in
    handler.status = status
    proc = _run(server.server_address[1])
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert handler.paths == ["/readyz"]
    if code:
        assert f"answered {status}" in proc.stdout


def test_nothing_listening_is_unhealthy(stand_in) -> None:
    server, _ = stand_in
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    proc = _run(port, host="127.0.0.1")
    assert proc.returncode == 1 and "unhealthy" in proc.stdout


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000/readyz"),
        ("", "http://127.0.0.1:8000/readyz"),
        ("::", "http://[::1]:8000/readyz"),
        ("10.1.2.3", "http://10.1.2.3:8000/readyz"),
        ("fd00::5", "http://[fd00::5]:8000/readyz"),
    ],
)
def test_url_for_bind_address(host: str, url: str) -> None:
    assert _module().readyz_url(host, "8000") == url
