"""Your own images end to end: a generated folder (PNG, JPEG, WebP, BMP; colour and grayscale;
odd sizes; unreadable files) goes through `exitwise train`, `calibrate`, `export` and the server.
Answers carry the folder's class names, the server sees exactly training's evaluation pixels, and
what it serves is what calibration simulated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from cli import main
from exitwise.bundle import load_bundle
from exitwise.datasets import EvalImages, open_dataset
from exitwise.datasets.folder import FolderImages, scan_folder
from exitwise.policy import confidence_and_prediction, decide_exits
from exitwise.preprocess import normalize
from serving.app import create_app
from serving.images import decode_images
from serving.settings import Settings
from training.config import DataSpec
from training.folder_data import channel_stats, decode, input_preprocessing

from ..folder_helpers import BAD_FILES, CLASSES, write_folder
from ..helpers import TINY_KWARGS

IMAGE_SIZE = 24


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("own-images")
    data = write_folder(root / "data", per_class=50, bad_files=True)
    recipe = {
        "model": {"preset": "msdnet-fmnist", "kwargs": dict(TINY_KWARGS)},
        "data": {"dataset": "folder", "root": str(data), "image_size": IMAGE_SIZE,
                 "heldout_min": 40, "workers": 0},
        "epochs": 3,
        "batch_size": 32,
        "meta": {"hidden_size": 16, "interval": 2},
        "device": "cpu",
        "cpu_threads": 1,
        "log": {"tensorboard": False, "progress": "none"},
    }  # fmt: skip
    config = root / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    out = root / "bundle"
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--config", str(config), "--out", str(out)]) == 0
        assert main(["calibrate", str(out), "--fractions", "0.4,0.7"]) == 0
        assert main(["export", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    yield {"data": data, "bundle": load_bundle(out), "root": root}


@pytest.fixture(scope="module")
def client(pipeline: dict[str, Any]) -> Iterator[TestClient]:
    settings = Settings(bundle=pipeline["bundle"].path, device="cpu")  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_bundle_describes_the_folder(pipeline: dict[str, Any]) -> None:
    m = pipeline["bundle"].manifest
    assert m.dataset == "folder" and m.class_names == CLASSES
    assert m.folder is not None and sorted(m.folder.skipped) == sorted(BAD_FILES)
    assert m.arch_kwargs["in_channels"] == 3 and m.arch_kwargs["num_classes"] == 4
    assert m.preprocessing.input_size == IMAGE_SIZE == m.preprocessing.crop
    # mean and std were computed on the training images (the held-out ones excluded)
    spec = DataSpec(dataset="folder", root=str(pipeline["data"]), image_size=IMAGE_SIZE)
    train = decode(FolderImages(scan_folder(pipeline["data"]), "train"),
                   input_preprocessing(spec), 0)  # fmt: skip
    held = set(pipeline["bundle"].heldout_indices().tolist())
    rest = np.asarray([i for i in range(len(train)) if i not in held])
    mean, std = channel_stats(train, rest)
    assert list(m.preprocessing.mean) == mean and list(m.preprocessing.std) == std


def test_the_server_sees_trainings_evaluation_pixels(pipeline: dict[str, Any]) -> None:
    m = pipeline["bundle"].manifest
    test = open_dataset("folder", "test", None, source=m.folder)
    view = EvalImages(test, m.preprocessing)  # what training evaluated and calibration scored
    files = test.files[:10]
    served = decode_images([f.read_bytes() for f in files], m.preprocessing, 4096 * 4096)
    expected = normalize(torch.stack([view[i][0] for i in range(len(files))]), m.preprocessing)
    assert torch.equal(served, expected)


def test_served_answers_are_calibrations_simulation_with_folder_names(
    pipeline: dict[str, Any], client: TestClient
) -> None:
    bundle = pipeline["bundle"]
    m = bundle.manifest
    test = open_dataset("folder", "test", None, source=m.folder)
    view = EvalImages(test, m.preprocessing)
    pixels = torch.stack([view[i][0] for i in range(len(view))])
    model = bundle.load_model("cpu")
    with torch.no_grad():
        outs = model(normalize(pixels, m.preprocessing))
    scored = [confidence_and_prediction(o) for o in outs]
    confidence = torch.stack([c for c, _ in scored], 1).numpy()
    prediction = torch.stack([p for _, p in scored], 1).numpy()
    for point in bundle.calibration().operating_points:
        exits = decide_exits(confidence, point.threshold_array())
        answers = []
        for start in range(0, len(test), 8):
            files = [("image", (f.name, f.read_bytes(), "application/octet-stream"))
                     for f in test.files[start : start + 8]]  # fmt: skip
            r = client.post("/v1/classify", files=files,
                            data={"budget_mflops": str(point.expected_mflops)})  # fmt: skip
            assert r.status_code == 200, r.text
            answers += r.json()["results"]
        assert [a["exit"] for a in answers] == (exits + 1).tolist(), point.name
        chosen = prediction[np.arange(len(exits)), exits]
        assert [a["class_name"] for a in answers] == [CLASSES[c] for c in chosen]
    assert client.get("/v1/model").json()["class_names"] == CLASSES


def test_the_onnx_backend_answers_alike(pipeline: dict[str, Any], client: TestClient) -> None:
    m = pipeline["bundle"].manifest
    files = open_dataset("folder", "test", None, source=m.folder).files[:8]
    form = [("image", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
    settings = Settings(bundle=pipeline["bundle"].path, device="cpu", backend="onnx")  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as onnx:
        answers = [c.post("/v1/classify", files=form, data={"max_exit": "2"}).json()["results"]
                   for c in (client, onnx)]  # fmt: skip
    assert [a["class_name"] for a in answers[0]] == [a["class_name"] for a in answers[1]]
    assert [a["exit"] for a in answers[0]] == [a["exit"] for a in answers[1]]


def test_calibrate_finds_a_moved_folder_with_data_root(
    pipeline: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    moved = pipeline["root"] / "moved"
    pipeline["data"].rename(moved)
    out = str(pipeline["bundle"].path)
    assert main(["calibrate", out, "--fractions", "0.5", "--no-cache"]) == 1
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: folder: ") and "does not exist" in err
    assert len(err.splitlines()) == 1
    assert main(["calibrate", out, "--fractions", "0.5", "--data-root", str(moved)]) == 0
