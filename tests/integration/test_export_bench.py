"""``exitwise bench backends``: both backends, every operating point, a markdown table."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.backends import LAST_EXIT, bench_backends
from cli import main
from exitwise.bundle import load_bundle
from tests.export_helpers import tiny_exported


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.getbasetemp() / "export-tiny"
    base.mkdir(exist_ok=True)
    return tiny_exported(base)


def test_bench_backends_report(exported: tuple[Path, Path]) -> None:
    bundle = load_bundle(exported[0])
    report = bench_backends(
        bundle, batch_sizes=[1, 4], images=8, device="cpu", repeats=1, data_root=exported[1]
    )
    assert report.image_source == "heldout" and report.images == 8
    assert report.provider == "CPUExecutionProvider"
    points = ["q0.5", "q1", "q2", LAST_EXIT]
    assert [(r.batch_size, r.point) for r in report.rows] == [
        (b, p) for b in (1, 4) for p in points
    ]
    exit_mflops = bundle.manifest.exit_mflops
    for row in report.rows:
        assert row.same_exit >= 0.75  # only images sitting on a threshold may differ
        assert row.torch.seconds > 0 and row.onnx.seconds > 0
        assert row.torch.batches == (8 if row.batch_size == 1 else 2)
        assert abs(sum(row.exit_fractions) - 1) < 1e-9
        assert exit_mflops[0] <= row.mflops <= exit_mflops[-1] + 1e-9
        if row.point == LAST_EXIT:
            assert row.exit_fractions[-1] == 1.0 and row.mflops == pytest.approx(exit_mflops[-1])
    cheap = next(r for r in report.rows if r.point == "q0.5")
    assert cheap.mflops < exit_mflops[-1]


def test_bench_backends_cli(exported: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "backends.md"
    args = ["bench", "backends", str(exported[0]), "--batch-sizes", "4", "--images", "8"]
    args += ["--repeats", "1", "--device", "cpu", "--data-root", str(exported[1])]
    assert main([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert capsys.readouterr().out == text
    assert "Command: `exitwise bench backends " in text and "--batch-sizes 4" in text
    rows = [line for line in text.splitlines() if line.startswith("| 4 |")]
    assert len(rows) == 4 and "| last exit |" in rows[-1]
    assert main([*args, "--out", str(out), "--append"]) == 0
    assert out.read_text().count("## `tiny`") == 2
    assert main(["bench", "backends", str(exported[0]), "--batch-sizes", "0"]) == 1
