"""The Grafana dashboard and the autoscaler query only metrics the server really exports: checked
against a live /metrics of the app serving the tiny bundle, after real traffic."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving.app import create_app
from serving.settings import Settings
from tests.deploy_helpers import (
    K8S,
    QUANTILE_RE,
    TARGET_LABELS,
    dashboard,
    dashboard_targets,
    grouping_labels,
    load_yaml,
    metric_selectors,
)
from tests.serving_helpers import Served, png, served_bundle


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, set[str]]]]:
    """Sample name -> (family type, label names), from /metrics after a few requests."""
    served: Served = served_bundle(tmp_path_factory)
    with TestClient(create_app(Settings(bundle=served.path))) as client:
        files = [
            ("file", (f"{i}.png", png(p), "image/png"))
            for i, p in enumerate(served.test.pixels[:3])
        ]
        assert client.post("/v1/classify", files=files).status_code == 200
        bad = client.post(
            "/v1/classify", content=b"not an image", headers={"content-type": "image/png"}
        )
        assert bad.status_code == 400
        assert client.get("/readyz").status_code == 200
        response = client.get("/metrics")
    assert response.status_code == 200
    out: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            _, labels = out.setdefault(sample.name, (family.type, set()))
            labels.update(sample.labels)
    yield out


def test_every_dashboard_query_uses_exported_series(exported) -> None:
    targets = dashboard_targets(dashboard())
    assert len(targets) >= 20
    for title, expr in targets:
        selectors = metric_selectors(expr)
        assert selectors, f"{title}: no exitwise metric in {expr}"
        labels: set[str] = set(TARGET_LABELS)
        for name, matched in selectors:
            assert name in exported, f"{title}: {name} is not exported by the server"
            labels |= exported[name][1]
            assert matched <= exported[name][1], f"{title}: {name} has no label {matched}"
        assert grouping_labels(expr) <= labels, f"{title}: grouping by a missing label: {expr}"


def test_quantiles_come_from_histogram_buckets(exported) -> None:
    for title, expr in dashboard_targets(dashboard()):
        found = QUANTILE_RE.findall(expr)
        assert len(found) == expr.count("histogram_quantile"), f"{title}: {expr}"
        for quantile, by, series in found:
            assert 0 < float(quantile) < 1
            assert series.endswith("_bucket") and exported[series][0] == "histogram", series
            assert "le" in {label.strip() for label in by.split(",")}, f"{title}: sum by (le)"
            assert "[$__rate_interval]" in expr


def test_dashboard_shows_what_operators_need() -> None:
    panels = {}
    for title, expr in dashboard_targets(dashboard()):
        panels.setdefault(title, []).append(expr)
    text = lambda title: " ".join(panels[title])  # noqa: E731

    assert "exitwise_requests_total" in text("Request rate by route")
    latency = panels["Latency p50 / p95 / p99"]
    assert sorted(QUANTILE_RE.findall(e)[0][0] for e in latency) == ["0.5", "0.95", "0.99"]
    assert all("exitwise_request_duration_seconds_bucket" in e for e in latency)
    queue_vs_compute = text("Queue wait vs compute")
    assert "exitwise_queue_wait_seconds_bucket" in queue_vs_compute
    assert "exitwise_compute_seconds_bucket" in queue_vs_compute
    assert "exitwise_batch_size_sum" in text("Batch size")
    assert grouping_labels(text("Per-stage batch size")) == {"stage"}
    assert "exitwise_stage_batch_size_sum" in text("Per-stage batch size")
    assert grouping_labels(text("Exits per second")) == {"exit"}
    assert "exitwise_exits_total" in text("Exits per second")
    assert "exitwise_mflops_per_image_sum" in text("MFLOPs per image")
    errors = text("Errors by status")
    assert grouping_labels(errors) == {"code"} and 'code=~"4..|5.."' in errors
    refusals = text("Refusals by reason")
    assert grouping_labels(refusals) == {"reason"} and "exitwise_refused_total" in refusals


def test_autoscaler_metric_is_an_exported_gauge(exported) -> None:
    hpa = load_yaml(K8S / "hpa.yaml")
    name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert exported[name][0] == "gauge"
    rule = load_yaml(K8S / "prometheus-adapter-values.yaml")["rules"]["custom"][0]
    ((series, _),) = metric_selectors(rule["seriesQuery"])
    assert series == name
