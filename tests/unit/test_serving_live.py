"""``serving.live.LiveStats``: the last minute of requests, driven by a fake clock."""

from __future__ import annotations

import json
import threading

import pytest

from serving.live import LiveStats, percentile


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_empty_summary_is_json_ready() -> None:
    clock = Clock()
    stats = LiveStats(4, clock=clock)
    clock.now += 120
    s = stats.summary()
    json.dumps(s)  # nothing that JSON cannot carry
    assert s["requests"] == 0 and s["images"] == 0 and s["requests_per_s"] == 0
    assert s["p50_ms"] is None and s["p99_ms"] is None and s["mflops_per_image"] is None
    assert s["exit_counts"] == [0, 0, 0, 0] and s["operating_points"] == []
    assert s["covered_s"] == 60.0
    assert s["timeline"]["requests_per_s"] == [0.0] * 12
    assert s["timeline"]["mflops_per_image"] == [None] * 12


def test_rates_percentiles_exit_mix_per_operating_point() -> None:
    clock = Clock()
    stats = LiveStats(3, clock=clock)
    clock.now += 100  # the server has run for longer than the window
    # 100 requests at q1 (1 image each, 1..100 ms), 20 at q2 (2 images each, 10 ms)
    for ms in range(1, 101):
        stats.record("q1", ms / 1000, [1], [2.0])
    for _ in range(20):
        stats.record("q2", 0.010, [2, 3], [5.0, 9.0])
    s = stats.summary()
    assert s["requests"] == 120 and s["images"] == 140
    assert s["requests_per_s"] == pytest.approx(120 / 60)
    assert s["images_per_s"] == pytest.approx(140 / 60)
    assert s["exit_counts"] == [100, 20, 20]
    assert s["mflops_per_image"] == pytest.approx((100 * 2 + 20 * 14) / 140)
    by_name = {p["name"]: p for p in s["operating_points"]}
    assert [p["name"] for p in s["operating_points"]] == ["q1", "q2"]  # busiest first
    q1, q2 = by_name["q1"], by_name["q2"]
    assert q1["requests_per_s"] == pytest.approx(100 / 60)
    assert (q1["p50_ms"], q1["p99_ms"]) == pytest.approx((50.0, 99.0))
    assert q1["exit_counts"] == [100, 0, 0] and q1["mflops_per_image"] == 2.0
    assert (q2["p50_ms"], q2["p99_ms"]) == pytest.approx((10.0, 10.0))
    assert q2["exit_counts"] == [0, 20, 20] and q2["mflops_per_image"] == 7.0
    assert q2["images"] == 40


def test_window_forgets_old_requests_and_timeline_buckets() -> None:
    clock = Clock()
    stats = LiveStats(2, window_s=60, bucket_s=5, clock=clock)
    clock.now += 300
    stats.record("old", 0.5, [2], [4.0])
    clock.now += 61  # out of the window
    stats.record("a", 0.001, [1], [1.0])
    clock.now += 7  # a lands in the slice 5..10 s ago
    stats.record("b", 0.002, [2], [4.0])
    stats.record("b", 0.002, [2], [4.0])
    s = stats.summary()
    assert [p["name"] for p in s["operating_points"]] == ["b", "a"]
    assert s["requests"] == 3 and s["exit_counts"] == [1, 2]
    timeline = s["timeline"]
    assert timeline["bucket_s"] == 5
    assert timeline["requests_per_s"][-1] == pytest.approx(2 / 5)  # newest slice last
    assert timeline["requests_per_s"][-2] == pytest.approx(1 / 5)
    assert sum(timeline["requests_per_s"][:-2]) == 0
    assert timeline["mflops_per_image"][-2:] == [1.0, 4.0]
    assert timeline["mflops_per_image"][0] is None
    clock.now += 61
    assert stats.summary()["requests"] == 0


def test_young_server_rates_cover_its_uptime() -> None:
    clock = Clock()
    stats = LiveStats(1, clock=clock)
    clock.now += 2.0
    for _ in range(10):
        stats.record("q", 0.001, [1], [1.0])
    s = stats.summary()
    assert s["covered_s"] == pytest.approx(2.0)
    assert s["requests_per_s"] == pytest.approx(5.0)


def test_bounded_memory_reports_the_span_it_covers() -> None:
    clock = Clock()
    stats = LiveStats(1, max_events=10, clock=clock)
    clock.now += 100
    for _ in range(30):
        clock.now += 0.5
        stats.record("q", 0.001, [1], [1.0])
    s = stats.summary()
    assert s["requests"] == 10
    # The kept events span the last 4.5 s: the rate is theirs, not 10 per minute.
    assert s["covered_s"] == pytest.approx(4.5)
    assert s["requests_per_s"] == pytest.approx(10 / 4.5)


def test_out_of_range_exits_are_not_counted() -> None:
    stats = LiveStats(2)
    stats.record("q", 0.001, [0, 3, 2], [1.0, 1.0, 1.0])
    s = stats.summary()
    assert s["exit_counts"] == [0, 1] and s["images"] == 3


def test_concurrent_record_and_summary_lose_nothing() -> None:
    stats = LiveStats(4)
    threads, per_thread = 8, 2000
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(per_thread):
                stats.record(f"q{t % 3}", 0.001, [1 + (i % 4)], [float(i % 4)])
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def reader() -> None:
        try:
            for _ in range(20):
                stats.summary()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    workers.append(threading.Thread(target=reader))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    s = stats.summary()
    assert s["requests"] == threads * per_thread
    assert s["exit_counts"] == [threads * per_thread // 4] * 4
    assert sum(p["requests"] for p in s["operating_points"]) == threads * per_thread


def test_rejects_nonsense_construction() -> None:
    with pytest.raises(ValueError):
        LiveStats(0)
    with pytest.raises(ValueError):
        LiveStats(2, window_s=10, bucket_s=20)
