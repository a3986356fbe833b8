"""``exitwise presets`` and ``exitwise inspect``: output and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli import main
from exitwise.bundle import HeldOutSplit, indices_sha256, save_bundle
from exitwise.models import create_model
from exitwise.preprocess import FASHION_MNIST


def test_inspect_preset_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "msdnet-cifar100", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "msdnet-cifar100"
    assert [e["exit"] for e in info["exits"]] == [1, 2, 3, 4, 5]
    assert info["exits"][0]["mflops"] == pytest.approx(6.79, abs=0.01)
    assert info["exits"][-1]["params_m"] == pytest.approx(2.08, abs=0.005)


def test_inspect_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("msdnet-fmnist")
    idx = np.arange(10)
    split = HeldOutSplit(dataset="fashion-mnist", size=10, seed=0, sha256=indices_sha256(idx))
    save_bundle(
        tmp_path / "b",
        model,
        name="fm",
        class_names=[str(i) for i in range(10)],
        preprocessing=FASHION_MNIST,
        heldout=(split, idx),
        training={"heldout_exit_accuracy": [80.0, 85.0, 88.0, 90.0]},
    )
    assert main(["inspect", str(tmp_path / "b"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "bundle"
    assert info["exits"][3]["heldout_accuracy"] == 90.0
    assert main(["inspect", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "not calibrated yet" in out and "90.00" in out


def test_presets_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)}
    assert {
        "msdnet-cifar10",
        "msdnet-cifar100",
        "msdnet-imagenet-step4",
        "msdnet-imagenet-step6",
        "msdnet-imagenet-step7",
        "ranet-cifar100",
        "ranet-imagenet",
        "msdnet-fmnist",
    } <= names


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    for args, needle in [
        (["inspect", "no-such-thing"], "neither a preset nor a bundle"),
        (["inspect", str(tmp_path / "broken")], "not valid JSON"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "cli", *args], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
        assert "Traceback" not in proc.stderr


def test_usage_error_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "inspect"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_inspect_loads_no_serving_stack() -> None:
    """Sub-commands import their packages inside the command: ``inspect`` never loads FastAPI,
    onnxruntime or the packages it does not use."""
    code = (
        "import sys; from cli import main; code = main(['inspect', 'msdnet-fmnist', '--json']); "
        "heavy = ('fastapi', 'onnxruntime', 'serving', 'training', 'calibration', 'exports', "
        "'benchmarks'); print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))); "
        "sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
