"""Export + parity of the demo preset (a tiny trained msdnet-fmnist bundle on fake Fashion-MNIST):
the manifest, the graphs, the CLI, fp16, and that a failed export leaves the bundle alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from cli import main
from exitwise.bundle import load_bundle
from exitwise.fileio import sha256_file
from exports import ExportError, ParityError, export_bundle, read_onnx_manifest
from exports import export as export_module
from exports.parity import FP32_TARGETS, ParityTargets
from tests.export_helpers import reuse_exported_stages, tiny_exported


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.getbasetemp() / "export-tiny"
    base.mkdir(exist_ok=True)
    return tiny_exported(base)


@pytest.fixture
def copy(exported: tuple[Path, Path], tmp_path: Path) -> Path:
    """A private copy of the exported bundle, for tests that change it."""
    return Path(shutil.copytree(exported[0], tmp_path / "bundle"))


def _listing(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_manifest_describes_the_graphs(exported: tuple[Path, Path]) -> None:
    bundle = load_bundle(exported[0])
    m = read_onnx_manifest(bundle)
    assert m.weights_sha256 == bundle.weights_sha256
    assert m.num_exits == bundle.manifest.num_exits == 4
    assert m.opset == 18 and not m.fp16
    assert m.exporter.name == "torch.onnx.export(dynamo=True)"
    assert m.exporter.torch and m.exporter.onnx
    files = sorted(p.name for p in (exported[0] / "onnx").iterdir())
    assert files == [
        "manifest.json",
        "stage_1.onnx",
        "stage_2.onnx",
        "stage_3.onnx",
        "stage_4.onnx",
    ]
    previous_out = None
    for stage in m.stages:
        path = exported[0] / "onnx" / stage.file
        assert sha256_file(path) == stage.sha256 and path.stat().st_size == stage.size_bytes
        assert [t.name for t in stage.inputs] == [f"state_in_{i}" for i in range(len(stage.inputs))]
        names = [t.name for t in stage.outputs]
        assert names == [f"state_out_{i}" for i in range(len(names) - 1)] + ["logits"]
        assert all(t.shape[0] == "batch" and t.dtype == "float32" for t in stage.inputs)
        assert stage.logits.shape == ["batch", 10]
        if previous_out is not None:
            assert [t.shape for t in stage.inputs] == previous_out
        previous_out = [t.shape for t in stage.state_outputs]
        # The graph itself: checker, names and the symbolic batch axis on every input/output.
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        for value in [*model.graph.input, *model.graph.output]:
            dim0 = value.type.tensor_type.shape.dim[0]
            assert dim0.dim_param and not dim0.HasField("dim_value")
    assert m.stages[0].inputs[0].shape == ["batch", 1, 32, 32]


def test_parity_figures_on_heldout_images(exported: tuple[Path, Path]) -> None:
    p = read_onnx_manifest(load_bundle(exported[0])).parity
    assert p.passed and p.inputs == "heldout" and p.dataset == "fashion-mnist"
    assert p.images == 200  # the whole (small) held-out split
    assert p.provider == "CPUExecutionProvider"
    assert len(p.max_abs_logits_diff) == 4
    assert all(0 <= d <= FP32_TARGETS.max_abs_logits_diff for d in p.max_abs_logits_diff)
    assert p.prediction_agreement == [1.0] * 4
    # Every calibrated operating point is checked; only images sitting on a threshold may move.
    assert [op.name for op in p.operating_points] == ["q0.5", "q1", "q2"]
    for op in p.operating_points:
        assert op.disagreements == op.borderline
        assert op.agreement >= 1 - op.borderline / p.images


@pytest.fixture
def fast_export(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the exporter (graphs of the session's export): parity, publishing and the CLI are
    what these tests are about."""
    monkeypatch.setattr(export_module, "export_stage", reuse_exported_stages(exported[0]))


def test_cli_exports_and_reports(
    copy: Path, exported: tuple[Path, Path], fast_export, capsys
) -> None:
    shutil.rmtree(copy / "onnx")
    code = main(["export", str(copy), "--data-root", str(exported[1]), "--parity-images", "64"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "4 stage graphs, opset 18, fp32" in out
    assert "64 held-out images" in out and "operating point q1" in out
    assert "exporting stage 4/4" in err
    assert read_onnx_manifest(load_bundle(copy)).parity.images == 64


def test_cli_json(copy: Path, exported: tuple[Path, Path], fast_export, capsys) -> None:
    code = main(["export", str(copy), "--data-root", str(exported[1]), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    data = json.loads(out)
    assert data["opset"] == 18 and data["parity"]["passed"]
    assert json.loads((copy / "onnx" / "manifest.json").read_text()) == data


def test_failed_parity_keeps_the_old_export(
    copy: Path, exported: tuple[Path, Path], fast_export, monkeypatch, capsys
) -> None:
    before = _listing(copy)
    impossible = ParityTargets(max_abs_logits_diff=0.0, agreement=1.0, decision_band=0.0)
    monkeypatch.setattr(export_module, "FP32_TARGETS", impossible)
    code = main(["export", str(copy), "--data-root", str(exported[1]), "--parity-images", "32"])
    _, err = capsys.readouterr()
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: parity check failed, nothing written: exit 1 logits differ")
    assert _listing(copy) == before  # old export intact, no temporary directory left
    with pytest.raises(ParityError, match="logits differ"):
        export_bundle(copy, data_root=exported[1], parity_images=32, targets=impossible)
    assert _listing(copy) == before


def test_failed_export_without_previous_one_writes_nothing(
    copy: Path, exported: tuple[Path, Path], monkeypatch
) -> None:
    shutil.rmtree(copy / "onnx")
    before = _listing(copy)
    reuse = reuse_exported_stages(exported[0])

    def fail_at_stage_3(stage, example, *, index, opset, fp16):  # type: ignore[no-untyped-def]
        if index == 2:
            raise ExportError("stage 3 could not be exported to ONNX: simulated")
        return reuse(stage, example, index=index, opset=opset, fp16=fp16)

    monkeypatch.setattr(export_module, "export_stage", fail_at_stage_3)
    with pytest.raises(ExportError, match="simulated"):
        export_bundle(copy, data_root=exported[1], parity_images=16)
    assert _listing(copy) == before
    assert not any(p.name.startswith(".onnx") for p in copy.iterdir())


def test_new_export_replaces_the_old_one(
    copy: Path, exported: tuple[Path, Path], fast_export
) -> None:
    (copy / "onnx" / "stray.txt").write_text("from an older export")
    manifest = export_bundle(copy, data_root=exported[1], parity_images=16)
    assert manifest.parity.images == 16
    assert not (copy / "onnx" / "stray.txt").exists()
    assert read_onnx_manifest(load_bundle(copy)) == manifest
    assert not any(p.name.startswith(".onnx") for p in copy.iterdir())


def test_bad_options_are_refused(copy: Path, capsys) -> None:
    with pytest.raises(ExportError, match="opset 12 is too old"):
        export_bundle(copy, opset=12)
    assert main(["export", str(copy / "missing")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {copy / 'missing'}: no such bundle directory"
