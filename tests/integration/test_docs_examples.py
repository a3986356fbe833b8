"""Every request example of README.md and docs/*.md, run against a real ``exitwise serve``.

The examples are the fenced blocks that talk to the server on 127.0.0.1:8000 (or
localhost:8000): ```sh / ```bash blocks with ``curl`` commands (one per line, or continued with
``\\``), and ```python blocks using ``tritonclient`` or ``httpx``. Each runs, as written but for
the server's address, against the tiny calibrated test bundle served under the demo's model name
(``fmnist-demo``), in a folder holding the image files the examples name. A command must answer
2xx, or the status its comment gives (``# 422``). A ```json block right after an example is the
answer it shows: its keys must be exactly the server's, at every level. The settings, errors and
metrics tables of docs/serving.md are checked against the code.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.serving_helpers import (
    REPO,
    Served,
    ServerProcess,
    documented_metrics,
    running_server,
    served_bundle,
)

pytestmark = pytest.mark.integration

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MODEL_NAME = "fmnist-demo"  # the demo's name, which the examples use
SERVER = re.compile(r"(?:http://)?(?:127\.0\.0\.1|localhost):8000")
SHELL = {"sh", "bash", "shell"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


@dataclass(frozen=True)
class Example:
    block: Block
    kind: str  # "curl" or "python"
    commands: tuple[str, ...]  # curl: one command per entry (continuations joined)
    answer_text: str | None = None  # the JSON answer shown right after it, if any

    @property
    def answer(self) -> Any:
        return None if self.answer_text is None else json.loads(self.answer_text)


def fenced(path: Path) -> list[Block]:
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if fence and lang is None:
            lang, start, body = fence.group(1).lower(), number, []
        elif fence and lang is not None and not fence.group(1):
            blocks.append(Block(path, start, lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def commands(text: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comment lines and prompts dropped."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if not current:
            line = line.removeprefix("$ ")
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


def talks_to_server(text: str) -> bool:
    return SERVER.search(text) is not None


def _client(code: str) -> bool:
    return "tritonclient" in code or "httpx" in code


def collect() -> list[Example]:
    examples = []
    for path in DOCS:
        blocks = fenced(path)
        for i, block in enumerate(blocks):
            after = blocks[i + 1] if i + 1 < len(blocks) else None
            answer = after.text if after is not None and after.lang == "json" else None
            if block.lang in SHELL:
                curls = [c for c in commands(block.text) if c.startswith("curl ")]
                curls = [c for c in curls if talks_to_server(c)]
                if curls:
                    examples.append(Example(block, "curl", tuple(curls), answer))
            elif block.lang == "python" and talks_to_server(block.text) and _client(block.text):
                examples.append(Example(block, "python", (block.text,), answer))
    return examples


EXAMPLES = collect()


def test_examples_are_found() -> None:
    """The examples are where the docs say, and none talks to the server untested."""
    where = {e.block.where.split(":")[0] for e in EXAMPLES}
    assert {"README.md", "docs/serving.md", "docs/own-data.md"} <= where
    assert any(e.kind == "python" and "tritonclient" in e.commands[0] for e in EXAMPLES)
    v1 = [e for e in EXAMPLES if e.answer is not None and "/v1/classify" in e.commands[-1]]
    assert any(e.block.path.name == "serving.md" and "results" in e.answer for e in v1)
    for path in DOCS:
        for block in fenced(path):
            if block.lang in SHELL | {"python"}:
                continue
            untested = [
                line for line in block.text.splitlines() if "curl " in line and SERVER.search(line)
            ]
            assert not untested, f"{block.where}: make it a ```sh block so that it is tested"


# --- the server and the files the examples name -----------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def server(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("docs-server") / "server.log"
    env = {"EXITWISE_MODEL_NAME": MODEL_NAME}
    yield from running_server(served.path, log, "--torch-threads", "1", env=env)


def _image_bytes(pixels: np.ndarray, suffix: str) -> bytes:
    arr = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF"}
    buf = io.BytesIO()
    try:
        Image.fromarray(arr).save(buf, format=formats.get(suffix.lower(), "PNG"))
    except (KeyError, OSError):  # a format this Pillow cannot write: PNG bytes decode the same
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def workdir(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with every image file the examples name (test images of the served bundle)."""
    root = tmp_path_factory.mktemp("docs-examples")
    names = set()
    for example in EXAMPLES:
        for text in example.commands:
            names.update(re.findall(r"@([\w./-]+)", text))
            names.update(re.findall(r"open\(\"([^\"]+)\"", text))
    for i, name in enumerate(sorted(names)):
        file = root / name
        file.parent.mkdir(parents=True, exist_ok=True)
        pixels = served.test.pixels[i % len(served.test.pixels)]
        file.write_bytes(_image_bytes(pixels, file.suffix))
    return root


def _local(text: str, server: ServerProcess) -> str:
    host = server.url.removeprefix("http://")
    return SERVER.sub(lambda m: ("http://" if m.group(0).startswith("http") else "") + host, text)


def same_keys(shown: Any, got: Any, where: str = "answer") -> None:
    """The keys of a shown JSON answer are the server's, at every level (values may differ)."""
    if isinstance(shown, dict):
        assert isinstance(got, dict), f"{where}: the server answers {type(got).__name__}"
        assert set(shown) == set(got), (
            f"{where}: shown but not answered {sorted(set(shown) - set(got))}, "
            f"answered but not shown {sorted(set(got) - set(shown))}"
        )
        for key, value in shown.items():
            same_keys(value, got[key], f"{where}.{key}")
    elif isinstance(shown, list) and isinstance(got, list) and got:
        for i, item in enumerate(shown):
            same_keys(item, got[min(i, len(got) - 1)], f"{where}[{i}]")


def expected_status(command: str) -> int | None:
    comment = re.search(r"\s#\s*(\d{3})\b", command)
    return int(comment.group(1)) if comment else None


# --- the examples -------------------------------------------------------------------------------


def _ids(examples: list[Example]) -> list[str]:
    return [e.block.where for e in examples]


CURL = [e for e in EXAMPLES if e.kind == "curl"]
PYTHON = [e for e in EXAMPLES if e.kind == "python"]


@pytest.mark.parametrize("example", CURL, ids=_ids(CURL))
def test_curl_example(
    example: Example, server: ServerProcess, workdir: Path, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed here: the curl examples cannot run")
    body: Any = None
    for n, command in enumerate(example.commands):
        out = tmp_path / f"answer-{n}"
        local = _local(command, server).removeprefix("curl ")
        shell = f"curl -o {out} -w '%{{http_code}}' {local}"
        done = subprocess.run(
            ["bash", "-c", shell], cwd=workdir, capture_output=True, text=True, timeout=60
        )
        where = f"{example.block.where}: {command}"
        assert done.returncode == 0, f"{where}\n{done.stderr}"
        status = int(done.stdout.strip() or 0)
        text = out.read_text() if out.exists() else ""
        want = expected_status(command)
        if want is None:
            assert 200 <= status < 300, f"{where}\n{status}: {text}"
        else:
            assert status == want, f"{where}\n{status}: {text}"
        body = text
    if example.answer is not None:
        same_keys(example.answer, json.loads(body), example.block.where)


@pytest.mark.parametrize("example", PYTHON, ids=_ids(PYTHON))
def test_python_example(
    example: Example, server: ServerProcess, workdir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "example.py"
    script.write_text(_local(example.commands[0], server))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{example.block.where}\n{done.stderr[-3000:]}"
    if example.answer is not None:
        same_keys(example.answer, json.loads(done.stdout), example.block.where)


# --- the reference tables of docs/serving.md --------------------------------------------------


def _section(title: str) -> str:
    text = (REPO / "docs" / "serving.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_settings_table_is_the_settings_class() -> None:
    from cli.serve import serve
    from serving.settings import Settings

    rows = re.findall(r"^\| `(EXITWISE_\w+)` \|([^|]*)\|", _section("Settings"), re.M)
    documented = {env.removeprefix("EXITWISE_").lower() for env, _ in rows}
    assert documented == set(Settings.model_fields)
    shown = {flag for _, cell in rows for flag in re.findall(r"`(--[\w-]+)`", cell)}
    flags = {"--" + name.replace("_", "-") for name in inspect.signature(serve).parameters} - {
        "--bundle"
    }
    assert shown == flags


def test_errors_table_is_the_error_table() -> None:
    from serving.errors import STATUS

    statuses = {int(s) for s in re.findall(r"^\| (\d{3}) \|", _section("Errors"), re.M)}
    assert statuses == set(STATUS.values()) | {500}


def test_metrics_table_is_what_the_server_exports(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/metrics", timeout=10).text
    exported = {
        f.name
        for f in text_string_to_metric_families(page)
        if f.name.startswith("exitwise_") and not f.name.endswith("_created")
    }
    documented = {name.removesuffix("_total") for name in documented_metrics()}
    assert documented == exported
