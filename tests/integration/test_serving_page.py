"""The playground's server side through the app (TestClient): the page and its files without a
key, the page's settings, sample images from the held-out split, the calibration curve, the live
summary. The page itself runs in a real browser in tests/e2e/test_playground_browser.py."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from exitwise.datasets import open_dataset
from serving.app import create_app
from serving.params import NAMES
from serving.routes.page import static_files
from serving.routes.samples import SAMPLE_COUNT, pick
from serving.settings import Settings
from tests.serving_helpers import Served, png, served_bundle

KEY = "page-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    settings = Settings(bundle=served.path, api_key=KEY, data_root=served.data_root)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as c:
        yield c


def test_page_and_its_files_load_without_the_key(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    html = r.text
    # Every file the page and its modules refer to is served, with its media type, no key.
    refs = re.findall(r'(?:src|href)="(/playground/[^"]+)"', html)
    for module in (f for f in static_files() if f.endswith(".js")):
        text = static_files()[module].body.decode()
        refs += [f"/playground/{m}" for m in re.findall(r'from "\./([^"]+)"', text)]
    assert "/playground/app.js" in refs and "/playground/style.css" in refs
    for ref in set(refs):
        got = client.get(ref)
        assert got.status_code == 200, ref
        kind = "text/javascript" if ref.endswith(".js") else "text/css"
        assert got.headers["content-type"].startswith(kind), ref
    # Nothing is fetched from elsewhere: no absolute URLs in what the page loads.
    outside = re.compile(r"(?:src|href|url)\s*[=(]\s*[\"']?(?:https?:)?//")
    for name, f in static_files().items():
        assert not outside.search(f.body.decode()), name


def test_static_files_revalidate_and_unknown_ones_are_json_404s(client: TestClient) -> None:
    first = client.get("/playground/app.js")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    again = client.get("/playground/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    for path in ("/playground/nothing.js", "/playground/..%2Fapp.py", "/playground/"):
        r = client.get(path)
        assert r.status_code == 404 and set(r.json()) == {"error"}, path


def test_page_config_says_what_the_page_must_know(client: TestClient) -> None:
    r = client.get("/playground/config.json")
    assert r.status_code == 200
    assert r.json() == {
        "api_key_required": True,
        "parameters": list(NAMES),
        "calibration_curve": False,
    }


def test_data_routes_need_the_key(client: TestClient) -> None:
    for path in ("/v1/samples", "/v1/samples/0.png", "/v1/model/curve.png", "/v1/live"):
        r = client.get(path)
        assert r.status_code == 401 and set(r.json()) == {"error"}, path


def test_samples_are_held_out_images_one_class_each(client: TestClient, served: Served) -> None:
    listing = client.get("/v1/samples", headers=AUTH).json()
    assert listing["dataset"] == "fashion-mnist" and listing["split"] == "heldout"
    assert listing["source_split"] == "train" and listing["note"] is None
    samples = listing["samples"]
    assert len(samples) == SAMPLE_COUNT
    assert len({s["label"] for s in samples}) == SAMPLE_COUNT  # ten classes: all different
    indices = served.bundle.heldout_indices()
    train = open_dataset("fashion-mnist", "train", served.data_root)
    for s in samples:
        assert indices[s["heldout_index"]] == s["dataset_index"]
        assert s["label"] == train.labels[s["dataset_index"]]
        assert s["class_name"] == train.class_names[s["label"]]
        r = client.get(s["url"], headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(r.content)))
        assert np.array_equal(pixels, train.image(s["dataset_index"]))  # lossless, as stored
        assert (s["width"], s["height"]) == (28, 28)
    r = client.get(f"/v1/samples/{SAMPLE_COUNT}.png", headers=AUTH)
    assert r.status_code == 404 and "there are 8" in r.json()["error"]


def test_a_sample_classifies_like_the_same_image_uploaded(
    client: TestClient, served: Served
) -> None:
    listing = client.get("/v1/samples", headers=AUTH).json()["samples"]
    train = open_dataset("fashion-mnist", "train", served.data_root)
    headers = {"content-type": "image/png", **AUTH}
    for s in listing[:3]:
        sample = client.get(s["url"], headers=headers).content
        own = png(train.image(s["dataset_index"])[None])
        answers = [
            client.post("/v1/classify", content=blob, params={"top_k": 2}, headers=headers)
            for blob in (sample, own)
        ]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        assert answers[0].json()["results"] == answers[1].json()["results"]


def test_pick_prefers_one_image_per_class() -> None:
    labels = np.array([3, 3, 1, 3, 2, 1, 0])
    assert pick(labels, 3) == [0, 2, 4]
    assert pick(labels, 5) == [0, 2, 4, 6, 1]
    assert pick(labels, 20) == [0, 2, 4, 6, 1, 3, 5]


def test_samples_without_the_data_set_say_why(served: Served, tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    settings = Settings(bundle=served.path, data_root=empty)
    with TestClient(create_app(settings)) as c:
        listing = c.get("/v1/samples").json()
        assert listing["samples"] == []
        assert listing["note"].startswith("no sample images (the server reads EXITWISE_DATA_ROOT)")
        assert str(empty) in listing["note"]
        assert c.get("/v1/samples/0.png").status_code == 404


def test_calibration_curve_from_the_bundle(served: Served, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(served.path, bundle)
    settings = Settings(bundle=bundle)
    with TestClient(create_app(settings)) as c:
        r = c.get("/v1/model/curve.png")
        assert r.status_code == 404
        assert "exitwise calibrate" in r.json()["error"]
        curve = png(np.full((1, 30, 40), 200, dtype=np.uint8))
        (bundle / "calibration").mkdir(exist_ok=True)
        (bundle / "calibration" / "curve.png").write_bytes(curve)
        assert c.get("/playground/config.json").json()["calibration_curve"] is True
        r = c.get("/v1/model/curve.png")
        assert r.status_code == 200 and r.content == curve
        assert r.headers["content-type"] == "image/png"


def test_live_summary_counts_classifications(client: TestClient, served: Served) -> None:
    before = client.get("/v1/live", headers=AUTH).json()
    assert before["num_exits"] == 4 and before["window_s"] == 60
    files = [("image", (f"{i}.png", png(served.test.pixels[i]), "image/png")) for i in range(3)]
    answer = client.post("/v1/classify", params={"max_exit": 2}, files=files, headers=AUTH).json()
    after = client.get("/v1/live", headers=AUTH).json()
    assert after["requests"] == before["requests"] + 1
    assert after["images"] == before["images"] + 3
    point = next(
        p for p in after["operating_points"] if p["name"] == answer["operating_point"]["name"]
    )
    assert point["requests"] >= 1 and point["p50_ms"] is not None
    added = [a - b for a, b in zip(after["exit_counts"], before["exit_counts"], strict=True)]
    served_exits = [r["exit"] for r in answer["results"]]
    assert added == [served_exits.count(k) for k in range(1, 5)]
