"""``exitwise calibrate`` end to end on a tiny trained bundle: files, table, cache, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.cache import CACHE_DIR
from calibration.run import CalibrateOptions, run_calibration
from cli import main
from exitwise.bundle import load_bundle, read_calibration, save_bundle
from exitwise.errors import CalibrationMismatchError
from exitwise.policy import decide_exits
from exitwise.preprocess import FASHION_MNIST
from tests.calibration_helpers import staged_exits, untrained_bundle
from tests.helpers import make_bundle, write_fashion_mnist, write_idx


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The tiny network runs fastest on one thread; two spin against each other on a busy
    # two-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny", data).path
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def bundle(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained bundle (tests write into it)."""
    return Path(shutil.copytree(trained, tmp_path / "bundle"))


def calibrate(bundle: Path, data: Path, *args: str) -> int:
    return main(["calibrate", str(bundle), "--data-root", str(data), *args])


def test_writes_files_and_prints_the_table(
    bundle: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    costs = load_bundle(bundle).manifest.exit_mflops
    budget = round((costs[0] + costs[-1]) / 2, 2)
    assert calibrate(bundle, data, "--budgets", str(budget), "--fractions", "0.5,0.9") == 0
    out = capsys.readouterr()
    assert "operating points" in out.out and f"budget-{budget:.2f}" in out.out
    assert "fraction-0.90" in out.out and "anytime" in out.out
    assert "running the network over 200 held-out images on cpu" in out.err
    for name in ("calibration.json", "calibration/report.md", "calibration/curve.png"):
        assert (bundle / name).is_file(), name
    assert (bundle / "calibration/curve.png").read_bytes().startswith(b"\x89PNG")
    assert "## Anytime" in (bundle / "calibration/report.md").read_text()
    assert len(list((bundle / CACHE_DIR).glob("*.safetensors"))) == 2

    loaded = load_bundle(bundle)
    cal = loaded.calibration()  # verified against the weights
    # Ordered by cost: half the last exit's cost is below the middle of the range.
    assert [p.name for p in cal.operating_points] == [
        "fraction-0.50",
        f"budget-{budget:.2f}",
        "fraction-0.90",
    ]
    assert len(cal.sweep) == 39 and len(cal.anytime) == 4
    assert cal.default_operating_point in {p.name for p in cal.operating_points}
    for p in cal.operating_points:
        assert p.heldout.mflops <= p.target_mflops  # type: ignore[operator]
        assert p.heldout.images == 200 and p.test is not None and p.test.images == 200


def test_core_rule_and_staged_run_reproduce_the_calibration(bundle: Path, data: Path) -> None:
    result = run_calibration(
        bundle, CalibrateOptions(data_root=data, fractions=[0.4, 0.6, 0.8], progress=False)
    )
    costs = np.array(result.calibration.exit_mflops)
    conf = result.heldout.confidence
    for i, point in enumerate(result.calibration.operating_points):
        thr = point.threshold_array()
        exits = decide_exits(conf, thr)
        counts = np.bincount(exits, minlength=len(costs))
        assert (counts / len(exits)).tolist() == point.heldout.exit_fractions
        assert float(counts @ costs) / len(exits) == pytest.approx(point.heldout.mflops)
        # The server's way (stage by stage, rows dropped, other batch sizes) agrees image by image.
        for batch_size in (1, 7) if i == 1 else (7,):
            assert staged_exits(result.bundle, data, thr, batch_size).tolist() == exits.tolist()


def test_cache_is_used_and_invalidated(bundle: Path, data: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    options = CalibrateOptions(data_root=data, budgets=[2.0], progress=False)
    first = run_calibration(bundle, options, messages.append)
    assert sum("running the network" in m for m in messages) == 2
    messages.clear()
    second = run_calibration(bundle, options, messages.append)
    assert sum("read from" in m for m in messages) == 2
    assert not any("running the network" in m for m in messages)
    np.testing.assert_array_equal(first.heldout.confidence, second.heldout.confidence)

    # Other data under the same file names: the fingerprint changes, the cache is not used.
    other = write_fashion_mnist(tmp_path / "other-data", seed=7)
    messages.clear()
    run_calibration(bundle, CalibrateOptions(data_root=other, budgets=[2.0]), messages.append)
    assert sum("running the network" in m for m in messages) == 2

    # A cache file whose stored key differs (made for other weights) is refused even under the
    # expected name; a corrupted one too.
    cache = sorted((bundle / CACHE_DIR).glob("heldout-*.safetensors"))
    assert len(cache) == 1  # the stale one was replaced
    stale = untrained_bundle(tmp_path / "stale", n_train=600)
    run_calibration(stale.path, CalibrateOptions(data_root=data, budgets=[2.0]))
    (stale_file,) = (stale.path / CACHE_DIR).glob("heldout-*.safetensors")
    messages.clear()
    run_calibration(bundle, options, messages.append)  # back to the right data: cache rebuilt
    (good,) = (bundle / CACHE_DIR).glob("heldout-*.safetensors")
    shutil.copyfile(stale_file, good)
    messages.clear()
    run_calibration(bundle, options, messages.append)
    assert any("made for other weights" in m for m in messages)
    good.write_bytes(b"\x00" * 100)
    messages.clear()
    run_calibration(bundle, options, messages.append)
    assert any("unreadable" in m for m in messages)
    messages.clear()
    run_calibration(
        bundle, CalibrateOptions(data_root=data, budgets=[2.0], use_cache=False), messages.append
    )
    assert sum("running the network" in m for m in messages) == 2


@pytest.mark.cuda
def test_cuda_scores_match_cpu(bundle: Path, data: Path) -> None:
    cpu = run_calibration(bundle, CalibrateOptions(data_root=data, device="cpu", use_cache=False))
    gpu = run_calibration(bundle, CalibrateOptions(data_root=data, device="cuda", use_cache=False))
    np.testing.assert_allclose(gpu.heldout.confidence, cpu.heldout.confidence, atol=1e-4)
    agree = (gpu.test.prediction == cpu.test.prediction).mean()
    assert agree > 0.99


def test_keep_logits(bundle: Path, data: Path) -> None:
    messages: list[str] = []
    plain = CalibrateOptions(data_root=data, budgets=[2.0])
    first = run_calibration(bundle, plain, messages.append)
    assert first.heldout.logits is None
    messages.clear()
    with_logits = CalibrateOptions(data_root=data, budgets=[2.0], keep_logits=True)
    second = run_calibration(bundle, with_logits, messages.append)
    assert any("has no logits" in m for m in messages)  # the cache without them is not enough
    logits = second.heldout.logits
    assert logits is not None and logits.shape == (200, 4, 10)
    conf = torch.softmax(torch.from_numpy(logits).double(), dim=-1).amax(dim=-1).numpy()
    np.testing.assert_allclose(conf, second.heldout.confidence, rtol=0, atol=1e-12)
    messages.clear()
    third = run_calibration(bundle, plain, messages.append)  # a cache with logits serves both
    assert sum("read from" in m for m in messages) == 2
    np.testing.assert_array_equal(third.test.confidence, second.test.confidence)


def test_new_weights_invalidate_cache_and_calibration(bundle: Path, data: Path) -> None:
    assert calibrate(bundle, data) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    # New weights in the same directory (as a re-train would write them).
    b = load_bundle(bundle)
    model = b.load_model()
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    idx = b.heldout_indices()
    save_bundle(
        bundle,
        model,
        name=b.name,
        class_names=b.manifest.class_names,
        preprocessing=FASHION_MNIST,
        dataset="fashion-mnist",
        heldout=(b.manifest.heldout, idx),  # type: ignore[arg-type]
    )
    assert json.loads((bundle / "manifest.json").read_text()) != manifest
    assert not (bundle / "calibration.json").exists()  # removed by save_bundle
    messages: list[str] = []
    run_calibration(bundle, CalibrateOptions(data_root=data), messages.append)
    assert sum("running the network" in m for m in messages) == 2


def test_calibration_for_other_weights_is_refused_by_the_loader(
    bundle: Path, data: Path, tmp_path: Path
) -> None:
    assert calibrate(bundle, data) == 0
    other = untrained_bundle(tmp_path / "other")
    shutil.copyfile(bundle / "calibration.json", other.path / "calibration.json")
    with pytest.raises(CalibrationMismatchError, match="made for other weights"):
        load_bundle(other.path).calibration()
    with pytest.raises(CalibrationMismatchError):
        read_calibration(other.path, other.weights_sha256)


def test_compare_overlays_another_bundle_without_writing_to_it(
    bundle: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = untrained_bundle(tmp_path / "uniform", name="uniform")
    before = sorted(p.name for p in other.path.rglob("*"))
    assert calibrate(bundle, data, "--compare", str(other.path)) == 0
    assert sorted(p.name for p in other.path.rglob("*")) == before  # nothing written there
    report = (bundle / "calibration/report.md").read_text()
    assert "## Comparison with `uniform`" in report
    assert "compared with uniform" in capsys.readouterr().out
    # A calibrated bundle is read from its calibration.json.
    assert calibrate(other.path, data) == 0
    assert calibrate(bundle, data, "--compare", str(other.path)) == 0


def _fake_with_size(root: Path, size: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 600), ("t10k", 200)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, size, size)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return root


def test_refusals_leave_the_calibration_untouched(
    bundle: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert calibrate(bundle, data) == 0
    saved = (bundle / "calibration.json").read_bytes()
    costs = load_bundle(bundle).manifest.exit_mflops
    cases = [
        (["--budgets", "0"], "positive"),
        (["--budgets", "-2"], "positive"),
        (["--budgets", "nan"], "not a number"),
        (["--budgets", f"{costs[-1] * 2}"], "outside the valid range"),
        (["--budgets", f"{costs[0] / 2}"], "outside the valid range"),
        (["--fractions", "0.01"], "below exit 1's cost"),
        (["--default", "budget-1.00"], "not one of the operating points"),
        (["--data-root", str(_fake_with_size(tmp_path / "small", 20))], "shorter side of 28"),
        (["--data-root", str(tmp_path / "missing")], "not found"),
        (["--device", "tpu"], "device"),
        (["--compare", str(untrained_bundle(tmp_path / "five", num_classes=5).path)], "classes"),
    ]
    for args, needle in cases:
        assert calibrate(bundle, data, *args) == 1, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and needle in err[-1], (args, err)
        assert (bundle / "calibration.json").read_bytes() == saved


def test_an_impossible_budget_is_refused_before_any_work(
    bundle: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    costs = load_bundle(bundle).manifest.exit_mflops
    low, high = costs[0] * 0.5, costs[-1] * 1.5
    assert calibrate(bundle, data, "--budgets", f"{low:g},{costs[1]:g},{high:g}") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err  # no network run, no traceback
    line = err[0]
    assert f"budgets {low:g} and {high:g} MFLOPs are outside the valid range" in line
    shown = [float(c) for c in line.split("per exit: ")[1].split(")")[0].split(", ")]
    assert shown == pytest.approx(costs, abs=1e-4) and len(shown) == len(costs)
    assert "--fractions 0.25,0.5,0.75" in line and f"`exitwise inspect {bundle}`" in line
    assert not (bundle / "calibration.json").exists()


def test_bundles_that_do_not_fit_are_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (untrained_bundle(tmp_path / "no-heldout", heldout=False), "no held-out split"),
        (untrained_bundle(tmp_path / "five", num_classes=5), "has 10 classes"),
        (
            untrained_bundle(tmp_path / "digits", class_names=[str(i) for i in range(10)]),
            "class 0 is 'T-shirt/top' but the bundle calls it '0'",
        ),
        (untrained_bundle(tmp_path / "big", n_train=5000), "held-out split indexes image"),
    ]
    for b, needle in cases:
        assert calibrate(b.path, data) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and needle in err[-1], err
        assert not (b.path / "calibration.json").exists()


def test_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    b = untrained_bundle(tmp_path / "no-heldout", heldout=False)
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "calibrate", str(b.path), "--budgets", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "held-out" in lines[0]
    assert "Traceback" not in proc.stderr
