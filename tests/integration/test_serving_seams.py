"""Where serving features meet: budget control under deadlines, a client that goes away, the
answer margin with deadlines, and degradation with the queue bound."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from exitwise.models import State
from serving.app import create_app
from serving.jobs import OVERLOAD
from serving.loading import load_model
from serving.protocol import TRANSPORT
from serving.settings import Settings
from tests.serving_helpers import Served, png, served_bundle

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


class SlowStages:
    """The bundle's runner with every stage taking at least ``seconds`` (a busy device)."""

    def __init__(self, runner: Any, seconds: float) -> None:
        self.runner, self.seconds = runner, seconds
        self.backend, self.device, self.provider = runner.backend, runner.device, runner.provider
        self.num_exits = runner.num_exits

    def initial_state(self, images: torch.Tensor) -> State:
        state: State = self.runner.initial_state(images)
        return state

    def run_stage(self, index: int, state: State) -> tuple[State, torch.Tensor]:
        time.sleep(self.seconds)
        out: tuple[State, torch.Tensor] = self.runner.run_stage(index, state)
        return out


def test_images_a_deadline_stops_do_not_steer_budget_control(served: Served) -> None:
    # Stages of 40 ms and a deadline of 60 ms: every image leaves by exit 1, most because of
    # the deadline. Their cost is the deadline's, not the thresholds': taken for what the
    # thresholds spend, the clean test images would look cheap, and the controller would move
    # to dearer thresholds (more load on a server that is already short of time).
    settings = Settings(bundle=served.path, max_images_per_request=64)  # type: ignore[call-arg]
    loaded = load_model(settings)
    loaded.runner = SlowStages(loaded.runner, 0.04)
    point = served.bundle.calibration().point("q1")
    pixels = np.concatenate([served.test.pixels] * 8)[:1600]
    with TestClient(create_app(settings, registry=CollectorRegistry(), loaded=loaded)) as client:
        reasons: list[str] = []
        for start in range(0, len(pixels), 64):
            batch = pixels[start : start + 64]
            files = [("image", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(batch)]
            data = {"budget_mflops": str(point.expected_mflops), "deadline_ms": "60", "top_k": "0"}
            r = client.post("/v1/classify", files=files, data=data)
            assert r.status_code == 200, r.text
            reasons += [x["stopped"] for x in r.json()["results"]]
            assert not r.json()["operating_point"]["controlled"]
        described = client.get("/v1/model").json()
        control = next(p for p in described["operating_points"] if p["name"] == "q1")
        assert control["budget_control"]["adjustments"] == 0
    assert reasons.count("deadline") > len(reasons) / 2


def test_a_client_that_goes_away_leaves_the_engine(served: Served) -> None:
    # The request's task is not cancelled when its client disconnects (uvicorn does not do it);
    # the server notices the disconnect while it waits for the engine and drops the request's
    # rows, so abandoned work does not run to the end under overload.
    settings = Settings(bundle=served.path)  # type: ignore[call-arg]
    loaded = load_model(settings)
    slow = SlowStages(loaded.runner, 0.0)  # 200 ms a stage once started (warm-up at full speed)
    loaded.runner = slow
    app = create_app(settings, registry=CollectorRegistry(), loaded=loaded)
    body = png(served.test.pixels[0])

    async def main() -> tuple[int, float, list[int]]:
        lifespan: asyncio.Queue[Any] = asyncio.Queue()
        sent: list[Any] = []

        async def lifespan_receive() -> Any:
            return await lifespan.get()

        async def lifespan_send(message: Any) -> None:
            sent.append(message)

        await lifespan.put({"type": "lifespan.startup"})
        life = asyncio.ensure_future(app({"type": "lifespan"}, lifespan_receive, lifespan_send))
        while not sent:
            await asyncio.sleep(0.01)
        service = app.state.service
        slow.seconds = 0.2
        gone = asyncio.Event()
        first = True
        responses: list[Any] = []

        async def receive() -> Any:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            responses.append(message)

        scope = {
            "type": "http", "method": "POST", "path": "/v1/classify", "raw_path": b"/v1/classify",
            "query_string": b"max_exit=4&top_k=0", "root_path": "", "scheme": "http",
            "headers": [(b"content-type", b"image/png"),
                        (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "http_version": "1.1",
        }  # fmt: skip
        start = time.monotonic()
        request = asyncio.ensure_future(app(scope, receive, send))
        await asyncio.sleep(0.02)  # it is in the engine: stage 1 of 4 (200 ms each) is running
        gone.set()
        await asyncio.wait_for(request, 5)
        elapsed = time.monotonic() - start
        rows = service.engine.queue_rows()
        await lifespan.put({"type": "lifespan.shutdown"})
        await life
        status = next(m["status"] for m in responses if m["type"] == "http.response.start")
        return status, elapsed, rows

    status, elapsed, rows = asyncio.run(main())
    assert status == 499
    # Answered when it left, not after the four stages (0.8 s); stages this long leave room
    # for a loaded machine (with 50 ms stages and 0.15 s allowed, a full CI run took 0.17 s).
    assert elapsed < 0.5
    assert rows == [0, 0, 0, 0]  # nothing of it waits for a stage


def _stages_of_30ms(served: Served) -> Any:
    """The app over the bundle with every stage taking at least 30 ms."""
    settings = Settings(bundle=served.path)  # type: ignore[call-arg]
    loaded = load_model(settings)
    loaded.runner = SlowStages(loaded.runner, 0.03)
    return create_app(settings, registry=CollectorRegistry(), loaded=loaded)


def _busy_loop_after_the_engine(app: Any) -> None:
    """40 ms of event-loop work after the engine answers, before the answer is rendered: work
    no plan sees (the started app's service). The latency model is told what the stages take
    (30 ms and a little compute, at every batch size): warm-up measured it beside the other
    tests, and a warm-up slowed by them once planned the first request one exit shallower."""
    service = app.state.service
    latency = service.engine.latency
    for stage in range(service.engine.num_exits):
        for rows in latency.buckets:
            latency.set(stage, rows, 0.0305)
    answer = service._result

    def busy(*args: Any) -> Any:
        time.sleep(0.04)
        return answer(*args)

    service._result = busy


@pytest.mark.usefixtures("cpu_alone")
def test_answers_late_for_reasons_no_plan_sees_move_deadlines_earlier(served: Served) -> None:
    # Stages of 30 ms, deadline_ms=120 and, after the engine answers, 40 ms of event-loop work
    # no plan sees. Planned by the deadline alone (a 1 ms margin), a request gets the deepest
    # exit that finishes by 119 ms, and the next one would not (so it finishes after 88 ms),
    # and is ready 40 ms later: late, whichever exit that is (3, or 2 when the other tests
    # slowed its way to admission by more than 27 ms, as happened once in five full runs). The
    # learned margin moves the due moment earlier until admission and the engine stop requests
    # at exit 2 or 1, ready by about 100 ms: in time.
    app = _stages_of_30ms(served)
    with TestClient(app) as client:
        _busy_loop_after_the_engine(app)
        image = png(served.test.pixels[0])
        runs = []
        for _ in range(55):
            params = {"max_exit": "4", "deadline_ms": "120", "top_k": "0"}
            r = client.post("/v1/classify", content=image, params=params,
                            headers={"content-type": "image/png"})  # fmt: skip
            assert r.status_code == 200, r.text
            # The server's own figure (Server-Timing's app: arrival to the answer rendered):
            # the test client's hops around it are not the server's, and vary on a busy machine.
            app_ms = re.search(r"app;dur=([0-9.]+)", r.headers["Server-Timing"])
            assert app_ms is not None
            runs.append((r.json()["results"][0]["exit"], float(app_ms[1]) / 1000))
        model = client.get("/v1/model").json()
        metrics = client.get("/metrics").text
    first_exit, first_seconds = runs[0]
    assert first_seconds > 0.120, runs  # planned without a margin: late
    assert model["deadline_margin_ms"] > 5
    exported = re.search(r"^exitwise_deadline_margin_seconds (\S+)$", metrics, re.MULTILINE)
    assert exported is not None
    assert float(exported[1]) == pytest.approx(model["deadline_margin_ms"] / 1000, abs=1e-6)
    first, last = runs[:15], runs[-15:]
    # No deeper exits than the first plan's, mostly shallower, and mostly in time. Not every
    # one: the margin comes down a little with each answer in time, so now and then it dips
    # under what keeps the next exit out and one answer is late again (one in 15-20 here). And
    # an answer from exit 2 is ready after about 110 ms here, 10 ms before the deadline: on a
    # machine busy with other tests (the whole suite on two cores), the parts no plan sees
    # took longer, six of the last 15 were late once, and the margin was still rising to keep
    # exit 2 out as well; eight were, in two full runs where the degradation flood of
    # tests/e2e/test_serving_deadlines.py ran on the other test worker (they now take turns:
    # cpu_alone). So the exits, which the plans decide, and more in time than at first.
    assert all(e <= first_exit for e, _ in last), runs
    assert sum(e < first_exit for e, _ in last) >= 12, runs
    in_time = [sum(s <= 0.120 for _, s in part) for part in (first, last)]
    assert in_time[1] > in_time[0], runs


class _Closed:
    """A connection its client has closed."""

    def is_closing(self) -> bool:
        return True


def test_answers_to_clients_that_left_do_not_teach_the_margin(served: Served) -> None:
    # The late answers of the test above, to clients whose connections had closed by then (a
    # balancer dropping its connections at once keeps the loop busy with the disconnects, and
    # the answers late): nobody gets them, so they must not move the next requests' due moment.
    app = _stages_of_30ms(served)

    async def closed_connections(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, TRANSPORT: _Closed()}
        await app(scope, receive, send)

    with TestClient(closed_connections) as client:
        _busy_loop_after_the_engine(app)
        params = {"max_exit": "4", "deadline_ms": "120", "top_k": "0"}
        for _ in range(5):
            r = client.post("/v1/classify", content=png(served.test.pixels[0]), params=params,
                            headers={"content-type": "image/png"})  # fmt: skip
            assert r.status_code == 200, r.text
        assert client.get("/v1/model").json()["deadline_margin_ms"] == 1.0  # still its floor


class GatedStages(SlowStages):
    """The bundle's runner with its first stage batch once ``armed`` held until ``gate`` is set
    (warm-up runs the stages before)."""

    def __init__(self, runner: Any, seconds: float = 0.0) -> None:
        super().__init__(runner, seconds)
        self.armed, self.inside, self.gate = False, threading.Event(), threading.Event()

    def run_stage(self, index: int, state: State) -> tuple[State, torch.Tensor]:
        if self.armed and not self.inside.is_set():
            self.inside.set()
            self.gate.wait(10)
        return super().run_stage(index, state)


def _wait_queued(engine: Any, images: int, until: float) -> None:
    """Until ``images`` are queued in ``engine`` (or the monotonic clock passes ``until``)."""
    while engine.queued_images < images and time.monotonic() < until:
        time.sleep(0.01)


def test_a_filling_queue_degrades_before_it_refuses_and_comes_home_while_idle(
    served: Served,
) -> None:
    # An engine bound to 8 queued images, its worker held on a first request. Two requests
    # that do not allow degradation queue 6 images: the wait forecast is short (the stages are
    # fast), but three quarters of the bound are taken. The next degradable request is served
    # a cheaper point, before the queue is full and a request gets a 503. Then the server is
    # left idle for a few holds: it shows level 0 and serves the next request the point it asks.
    settings = Settings(  # type: ignore[call-arg]
        bundle=served.path, max_queue_images=8, max_images_per_request=4, degrade_hold_ms=200
    )
    loaded = load_model(settings)
    runner = GatedStages(loaded.runner)
    loaded.runner = runner
    dearest = max(served.bundle.calibration().operating_points, key=lambda p: p.expected_mflops)
    app = create_app(settings, registry=CollectorRegistry(), loaded=loaded)
    with TestClient(app) as client:
        engine = app.state.service.engine
        runner.armed = True

        def post(n: int, degrade: bool) -> Any:
            files = [
                ("image", (f"{i}.png", png(served.test.pixels[i]), "image/png")) for i in range(n)
            ]
            data = {"budget_mflops": str(dearest.expected_mflops), "degrade": str(degrade).lower()}
            return client.post("/v1/classify", files=files, data=data)

        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(post, 1, False)
            assert runner.inside.wait(10)
            held = [pool.submit(post, 3, False) for _ in range(2)]
            deadline = time.monotonic() + 10
            _wait_queued(engine, 6, deadline)
            assert engine.queued_images == 6
            degradable = pool.submit(post, 1, True)
            _wait_queued(engine, 7, deadline)
            runner.gate.set()
            answers = [f.result(timeout=30) for f in (first, *held, degradable)]
        held_level = app.state.service.degrader.last
        time.sleep(0.2 * (held_level + 1))  # a hold per point, and no request meanwhile
        idle = client.get("/v1/model").json()["degradation"]["level"]
        gauge = re.search(r"^exitwise_degradation_level (\S+)$", client.get("/metrics").text, re.M)
        after = post(1, True).json()["operating_point"]
    assert held_level > 0 and idle == 0 and gauge is not None and float(gauge[1]) == 0
    assert after["degraded_from"] is None and after["name"] == dearest.name
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    plans = [a.json()["operating_point"] for a in answers]
    assert all(p["degraded_from"] is None for p in plans[:3])
    assert plans[3]["degraded_from"] == dearest.name
    assert plans[3]["expected_mflops"] < dearest.expected_mflops


def test_past_the_cheapest_point_a_late_deadline_is_refused_not_queued(served: Served) -> None:
    # Degrade before shedding: a request whose deadline not even exit 1 can meet is answered
    # late by default, but once degradation is at its cheapest point the server has nothing
    # left to cheapen, and a late answer would make the requests behind it late too: such a
    # request gets a 503 with Retry-After (the client can go elsewhere), once such forecasts
    # have gone on for degrade_shed_after_ms (a shorter burst is answered late). One that opts
    # out of degradation is still answered late, and says so. Stages of 50 ms, batches of 2,
    # the worker held with 6 images queued: the forecast wait is long, the level the cheapest.
    settings = Settings(  # type: ignore[call-arg]
        bundle=served.path,
        max_queue_images=16,
        max_images_per_request=4,
        max_batch_size=2,
        degrade_queue_ms=10,
        degrade_shed_after_ms=50,
    )
    loaded = load_model(settings)
    runner = GatedStages(loaded.runner, 0.05)
    loaded.runner = runner
    app = create_app(settings, registry=CollectorRegistry(), loaded=loaded)
    with TestClient(app) as client:
        engine, degrader = app.state.service.engine, app.state.service.degrader
        runner.armed = True

        def post(n: int, **data: str) -> Any:
            files = [
                ("image", (f"{i}.png", png(served.test.pixels[i]), "image/png")) for i in range(n)
            ]
            return client.post("/v1/classify", files=files, data={"degrade": "false", **data})

        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(post, 1)
            assert runner.inside.wait(10)
            held = [pool.submit(post, 3) for _ in range(2)]
            deadline = time.monotonic() + 10
            _wait_queued(engine, 6, deadline)
            assert engine.queued_images == 6
            burst = pool.submit(post, 1, degrade="true", deadline_ms="80")  # the overload's start
            _wait_queued(engine, 7, deadline)
            assert degrader.last == degrader.max_level > 0
            time.sleep(0.06)  # late forecasts for longer than the interval: it stands
            refused = post(1, degrade="true", deadline_ms="80")
            late = pool.submit(post, 1, deadline_ms="80")
            _wait_queued(engine, 8, deadline)
            runner.gate.set()
            answers = [f.result(timeout=30) for f in (first, *held, burst, late)]
        metrics = client.get("/metrics").text
    assert 'exitwise_refused_total{reason="deadline_shed"} 1.0' in metrics
    assert 'exitwise_refused_total{reason="deadline_strict"} 0.0' in metrics
    assert refused.status_code == 503, refused.text
    assert "cheapest operating point" in refused.json()["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    for answered in (a.json() for a in answers[-2:]):  # the burst's, and the one opting out
        assert answered["deadline_met"] is False
        assert answered["results"][0]["exit"] == 1


def test_a_deadline_past_the_clients_own_timeout_is_422(served: Served) -> None:
    # The hard timeout fires first: planned for deadline_ms, the request would run exits it
    # cannot finish and get a 504, where an answer from exit 1 was in reach. So deadline_ms must
    # be at most the request's timeout, the client's timeout_ms (v2: Triton's ``timeout``, in
    # microseconds) as well as the server's; a deadline within it is served.
    settings = Settings(bundle=served.path)  # type: ignore[call-arg]
    image = png(served.test.pixels[0])
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}
    v2 = {"inputs": [tensor]}  # v2 takes the normalised tensor
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        url = "/v1/classify?deadline_ms={}&timeout_ms={}"
        long = client.post(url.format(5000, 2000), content=image, headers=PNG)
        assert long.status_code == 422, long.text
        assert "at most the request's timeout (2000 ms)" in long.json()["error"]
        within = client.post(url.format(2000, 5000), content=image, headers=PNG)
        assert within.status_code == 200, within.text
        assert within.json()["deadline_met"] is True
        body = {**v2, "parameters": {"deadline_ms": 5000, "timeout": 2_000_000}}
        r = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())
        assert r.status_code == 422 and "request's timeout (2000 ms)" in r.json()["error"], r.text
        body = {**v2, "parameters": {"deadline_ms": 2000, "timeout": 5_000_000}}
        r = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())
        assert r.status_code == 200, r.text


def test_a_strict_deadline_counts_every_batch_a_big_request_fills(served: Served) -> None:
    # Stages of 50 ms, batches of 2, deadline_ms=150 with deadline_policy=strict. One image
    # makes exit 1 in time, with 100 ms to spare: a test worker beside this one slows the
    # request's way to the engine down (40 ms to spare were not enough once, and the engine
    # refused it as it should, exit 1 no longer able to make the deadline). Eight fill four
    # stage-1 batches, 200 ms: forecast as one image they were admitted and answered late;
    # counted by their batches they get the 503 at once.
    settings = Settings(bundle=served.path, max_batch_size=2, max_images_per_request=8)  # type: ignore[call-arg]
    loaded = load_model(settings)
    loaded.runner = SlowStages(loaded.runner, 0.05)
    data = {"deadline_ms": "150", "deadline_policy": "strict", "degrade": "false"}
    with TestClient(create_app(settings, registry=CollectorRegistry(), loaded=loaded)) as client:

        def post(n: int) -> Any:
            files = [("image", (f"{i}.png", png(served.test.pixels[i]), "image/png"))
                     for i in range(n)]  # fmt: skip
            return client.post("/v1/classify", files=files, data=data)

        one, eight = post(1), post(8)
    assert one.status_code == 200 and one.json()["deadline_met"] is True, one.text
    assert eight.status_code == 503, eight.text
    assert "deadline_policy=strict" in eight.json()["error"]


def test_a_strict_request_a_stall_makes_late_is_refused_not_answered_late(served: Served) -> None:
    # A request runs a stage that stalls for 250 ms, unforeseen. Two requests with
    # deadline_ms=100 were admitted in time behind it (the forecast saw a stage of well under a
    # millisecond) and wait for stage 1. When the stall ends their deadline has passed: the
    # default policy answers from exit 1, late, and says so; deadline_policy=strict gets its
    # 503 then, with Retry-After, and is not run. (Before, both were answered late.)
    settings = Settings(bundle=served.path)  # type: ignore[call-arg]
    loaded = load_model(settings)
    runner = loaded.runner = GatedStages(loaded.runner)
    image = png(served.test.pixels[0])
    with TestClient(create_app(settings, registry=CollectorRegistry(), loaded=loaded)) as client:

        def post(params: dict[str, str]) -> Any:
            return client.post("/v1/classify", content=image, params=params, headers=PNG)

        runner.armed = True
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(post, {"max_exit": "1"})
            assert runner.inside.wait(10)
            deadline = {"deadline_ms": "100", "degrade": "false", "max_exit": "4"}
            late = pool.submit(post, deadline)
            strict = pool.submit(post, {**deadline, "deadline_policy": "strict"})
            time.sleep(0.25)
            runner.gate.set()
            first_r, late_r, strict_r = first.result(), late.result(), strict.result()
        metrics = client.get("/metrics").text
    assert first_r.status_code == 200, first_r.text
    assert late_r.status_code == 200 and late_r.json()["deadline_met"] is False, late_r.text
    assert late_r.json()["results"][0]["stopped"] == "deadline"
    assert strict_r.status_code == 503, strict_r.text
    assert strict_r.headers["Retry-After"] == "1"
    assert "can no longer be met" in strict_r.json()["error"]
    assert 'exitwise_refused_total{reason="deadline_strict"} 1.0' in metrics


def test_images_an_overload_stops_are_answered_so_and_do_not_steer_budget_control(
    served: Served,
) -> None:
    # A request allows degradation (the server's default, or its own degrade=true) or not
    # (degrade=false): the engine is told in the ticket, and may then answer its images from
    # an exit they passed to make room in a full queue (the engine's tests). Such an image says
    # so (stopped: overload), and its cost is the server's doing, not the thresholds': budget
    # control gets it as censored, as it gets a deadline's stops.
    settings = Settings(bundle=served.path)  # type: ignore[call-arg]
    app = create_app(settings, registry=CollectorRegistry(), loaded=load_model(settings))
    point = served.bundle.calibration().point("q1")
    with TestClient(app) as client:
        service = app.state.service
        engine_infer, observe = service.engine.infer, service.control.observe
        allowed: list[bool] = []
        traffic: list[Any] = []

        async def infer(ticket: Any, *args: Any, **kwargs: Any) -> Any:
            allowed.append(ticket.degrade)
            out = await engine_infer(ticket, *args, **kwargs)
            if ticket.degrade:
                out.reason[:] = OVERLOAD  # as a full queue would have answered them
            return out

        def observing(plan: Any, mflops: Any, seen: Any) -> None:
            traffic.append(seen)
            observe(plan, mflops, seen)

        service.engine.infer, service.control.observe = infer, observing
        answers = []
        for degrade in (None, "true", "false"):
            query = {"budget_mflops": point.expected_mflops, "top_k": 2}
            if degrade is not None:
                query["degrade"] = degrade
            r = client.post("/v1/classify", params=query, content=png(served.test.pixels[0]),
                            headers=PNG)  # fmt: skip
            assert r.status_code == 200, r.text
            answers.append(r.json()["results"][0])
    assert allowed == [True, True, False]
    assert [a["stopped"] for a in answers[:2]] == ["overload", "overload"]
    assert answers[2]["stopped"] != "overload" and len(answers[0]["top_k"]) == 2
    assert [t.censored.tolist() for t in traffic[:2]] == [[True], [True]]
    assert not traffic[2].censored.any()


def test_the_check_before_the_body_knows_a_degrade_false_in_the_query(served: Served) -> None:
    # Before the body is read the route asks whether the engine has room, or could make it by
    # cutting degradable rows. A request that declines degradation in its query cannot have
    # such room made for it: it is refused then (the cheap 503), not after its body is read.
    # Elsewhere (the form, v2's JSON) the check assumes it may: the parameters come later. A
    # value that does not parse says nothing here (its 422 comes with the parameters).
    settings = Settings(bundle=served.path)  # type: ignore[call-arg]
    app = create_app(settings, registry=CollectorRegistry(), loaded=load_model(settings))
    body = png(served.test.pixels[0])
    with TestClient(app) as client:
        service = app.state.service
        asked: list[bool] = []
        check = service.check_room

        def checking(degrade: bool = True) -> None:
            asked.append(degrade)
            check(degrade)

        service.check_room = checking
        codes = [
            client.post(f"/v1/classify?{query}", content=body, headers=PNG).status_code
            for query in ("", "degrade=false", "degrade=OFF", "degrade=true", "degrade=maybe")
        ]
        form = {"degrade": "false"}
        files = [("image", ("0.png", body, "image/png"))]
        codes.append(client.post("/v1/classify", files=files, data=form).status_code)
    assert asked == [True, False, False, True, True, True]
    assert codes == [200, 200, 200, 200, 422, 200]
