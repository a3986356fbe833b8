"""The playground page in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright against a real ``exitwise serve`` of the tiny bundle, with an API key.

Checked: the page asks for the key and loads; an uploaded image and each budget slider position
show the exit and MFLOPs that the API answers for the same image and parameters; a held-out
sample too; the live panel follows the server's traffic; keyboard use (Tab to the controls,
arrow keys on the slider and the exit cap); the layout at 1280x800 and at phone width; and no
console errors or page errors anywhere. About 15 s on a 2-core machine (plus the shared tiny
bundle when these tests run alone).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest

from tests.serving_helpers import Served, ServerProcess, png, running_server, served_bundle

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
KEY = "browser-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.slow  # a server process and a browser: ~20 s for the module

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
if not CHROMIUM.exists():
    pytest.skip(
        "no Chromium at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def server(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny bundle (copied, with a calibration curve added) behind an API key."""
    root = tmp_path_factory.mktemp("playground")
    bundle = root / "bundle"
    shutil.copytree(served.path, bundle)
    (bundle / "calibration").mkdir(exist_ok=True)
    curve = np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (80, 1))[None]
    (bundle / "calibration" / "curve.png").write_bytes(png(curve))
    env = {
        "EXITWISE_API_KEY": KEY,
        "EXITWISE_DATA_ROOT": str(served.data_root),
        "EXITWISE_TORCH_THREADS": "1",
    }
    yield from running_server(bundle, root / "server.log", "--drain-seconds", "0", env=env)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        profile = tempfile.mkdtemp(prefix="exitwise-chromium-")
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=LAUNCH_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Page:
    """A tab with what it logged: console errors and uncaught exceptions fail the test."""

    page: Any
    errors: list[str] = field(default_factory=list)
    classify_urls: list[str] = field(default_factory=list)


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    tab = Page(page)
    page.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))
    page.on("pageerror", lambda e: tab.errors.append(f"page error: {e}"))
    page.on("request", lambda r: "/v1/classify" in r.url and tab.classify_urls.append(r.url))
    yield tab
    page.close()
    assert tab.errors == []


def open_with_key(tab: Page, url: str) -> Any:
    page = tab.page
    page.goto(url)
    page.wait_for_selector("#key-form:not([hidden])")
    assert page.is_hidden("#main")
    page.fill("#key-input", KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#main:not([hidden])")
    page.wait_for_selector("#model-exits tbody tr")
    return page


def wait_for_answer(tab: Page, n: int) -> dict[str, list[str]]:
    """Wait until the page has drawn the answer to its ``n``-th classify request; its query."""
    tab.page.wait_for_function(
        "n => document.getElementById('request-line').dataset.seq === String(n)", arg=n
    )
    assert len(tab.classify_urls) == n
    return parse_qs(urlparse(tab.classify_urls[-1]).query)


def shown(page: Any) -> list[dict[str, Any]]:
    """Per result card: the exit and MFLOPs as data and as the text a person reads."""
    return page.eval_on_selector_all(
        "#results article",
        """cards => cards.map(c => ({
            exit: Number(c.dataset.exit), mflops: Number(c.dataset.mflops),
            exitText: c.querySelector('[data-field=exit]').textContent,
            mflopsText: c.querySelector('[data-field=mflops]').textContent,
            classId: Number(c.dataset.classId),
            stopped: c.dataset.stopped,
            stoppedText: c.querySelector('[data-field=stopped]').textContent,
        }))""",
    )


def api_answer(url: str, blobs: list[tuple[str, bytes]], query: dict[str, list[str]]) -> Any:
    files = [("image", (name, blob, "image/png")) for name, blob in blobs]
    params = {k: v[0] for k, v in query.items()}
    r = httpx.post(f"{url}/v1/classify", params=params, files=files, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def check_matches_api(page: Any, url: str, blobs: list[tuple[str, bytes]], query: Any) -> Any:
    answer = api_answer(url, blobs, query)
    cards = shown(page)
    assert len(cards) == len(blobs)
    for card, r in zip(cards, answer["results"], strict=True):
        assert (card["exit"], card["mflops"], card["classId"]) == (
            r["exit"],
            r["mflops"],
            r["class_id"],
        )
        assert card["exitText"] == str(r["exit"])
        assert card["stopped"] == r["stopped"] and card["stoppedText"] == f"({r['stopped']})"
        assert card["mflopsText"] == page.evaluate("v => v.toFixed(2)", r["mflops"])
    return answer


def test_upload_and_every_budget_show_what_the_api_answers(
    tab: Page, server: ServerProcess, served: Served, tmp_path: Path
) -> None:
    page = open_with_key(tab, server.url)
    model = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()
    points = sorted(model["operating_points"], key=lambda p: p["expected_mflops"])
    assert page.get_attribute("#budget", "max") == str(len(points))  # the points + full network
    # The curve is fetched after the page: wait for it (a loaded machine was slower than a check).
    page.wait_for_selector("#curve-img", state="visible")
    page.wait_for_function("document.getElementById('curve-img').complete")
    assert page.is_visible("#curve-img")
    assert page.evaluate("document.getElementById('curve-img').naturalWidth") == 120
    assert page.is_visible("#deadline-control")  # the server lists deadline_ms

    blobs = []
    for i in range(6):
        path = tmp_path / f"test-{i}.png"
        path.write_bytes(png(served.test.pixels[i]))
        blobs.append((path.name, path.read_bytes()))
    page.set_input_files("#file-input", [str(tmp_path / name) for name, _ in blobs])
    query = wait_for_answer(tab, 1)
    default = model["default_operating_point"]
    assert float(query["budget_mflops"][0]) == next(
        p["expected_mflops"] for p in points if p["name"] == default
    )
    check_matches_api(page, server.url, blobs, query)

    # Keyboard: Tab from the top of the page reaches the slider; Home and the arrows move it.
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "budget":
            break
    assert page.evaluate("document.activeElement.id") == "budget"
    page.keyboard.press("Home")
    n = 2
    seen_exits = set()
    for position, point in enumerate([*points, None]):
        if position:
            page.keyboard.press("ArrowRight")
        query = wait_for_answer(tab, n)
        n += 1
        if point is None:  # the last position: the full network
            assert "budget_mflops" not in query and query["max_exit"] == ["4"]
        else:
            assert float(query["budget_mflops"][0]) == point["expected_mflops"]
            assert point["name"] in page.text_content("#budget-out")
        answer = check_matches_api(page, server.url, blobs, query)
        seen_exits |= {r["exit"] for r in answer["results"]}
        assert f"Operating point {answer['operating_point']['name']}" in page.text_content(
            "#request-line"
        )
    assert len(seen_exits) > 1  # the budgets really moved the exits

    # The exit cap, by keyboard too: Tab on to the select, arrow down to "exit 1".
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "max-exit"
    page.keyboard.press("ArrowDown")
    query = wait_for_answer(tab, n)
    assert query["max_exit"] == ["1"]
    check_matches_api(page, server.url, blobs, query)
    assert {c["exit"] for c in shown(page)} == {1}
    assert {c["stopped"] for c in shown(page)} == {"cap"}

    # A deadline goes out as deadline_ms; a generous one leaves the answers as they were.
    page.fill("#deadline-ms", "5000")
    page.dispatch_event("#deadline-ms", "change")
    query = wait_for_answer(tab, n + 1)
    assert query["deadline_ms"] == ["5000"]
    check_matches_api(page, server.url, blobs, query)


def test_the_key_prompt(tab: Page, server: ServerProcess) -> None:
    page = tab.page
    page.goto(server.url)
    page.wait_for_selector("#key-form:not([hidden])")
    page.fill("#key-input", "wrong")
    page.keyboard.press("Enter")
    page.wait_for_selector("#key-error:not([hidden])")
    assert page.text_content("#key-error") == "invalid API key"  # the server's own words
    assert page.is_hidden("#main")
    # The browser logs the refused request itself; that one is expected, nothing else is.
    assert len(tab.errors) == 1 and "401" in tab.errors[0]
    tab.errors.clear()
    page.fill("#key-input", KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#main:not([hidden])")
    page.reload()  # the key stays with the tab (sessionStorage): no second prompt
    page.wait_for_selector("#main:not([hidden])")
    assert page.is_hidden("#key-form")


def test_a_held_out_sample(tab: Page, server: ServerProcess) -> None:
    page = open_with_key(tab, server.url)
    page.wait_for_selector("#samples:not([hidden]) .sample")
    listing = httpx.get(f"{server.url}/v1/samples", headers=AUTH).json()["samples"]
    assert page.locator(".sample").count() == len(listing)
    page.locator(".sample").nth(2).click()
    query = wait_for_answer(tab, 1)
    blob = httpx.get(f"{server.url}{listing[2]['url']}", headers=AUTH).content
    check_matches_api(page, server.url, [("sample.png", blob)], query)
    assert page.get_attribute(".sample >> nth=2", "aria-pressed") == "true"
    assert listing[2]["class_name"] in page.text_content("#results")


def test_live_panel_follows_the_server(tab: Page, server: ServerProcess, served: Served) -> None:
    page = open_with_key(tab, server.url)
    page.wait_for_selector("#live-totals[data-requests]")
    before = int(page.get_attribute("#live-totals", "data-requests"))
    blob = png(served.test.pixels[0])
    for max_exit in (1, 2, 2):
        r = httpx.post(
            f"{server.url}/v1/classify",
            params={"max_exit": max_exit},
            content=blob,
            headers={"content-type": "image/png", **AUTH},
            timeout=30,
        )
        assert r.status_code == 200
    # The panel polls every 2 s; the server's own figures must appear without a reload.
    page.wait_for_function(
        "n => Number(document.getElementById('live-totals').dataset.requests) >= n",
        arg=before + 3,
    )
    rows = page.eval_on_selector_all(
        "#live-points tbody tr",
        "rows => Object.fromEntries(rows.map(r => [r.cells[0].textContent,"
        " r.cells[5].textContent]))",
    )
    exits = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()["exits"]
    # Anytime requests cost exactly their exit: the page shows that as their expectation.
    assert rows["max-exit-1"] == f"{exits[0]['mflops']:.2f}"
    assert rows["max-exit-2"] == f"{exits[1]['mflops']:.2f}"
    assert page.locator("#live-exits svg rect").count() >= 2
    assert page.locator("#live-latency svg").count() == 1


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_layout(tab: Page, server: ServerProcess, served: Served, width: int, height: int) -> None:
    page = tab.page
    page.set_viewport_size({"width": width, "height": height})
    open_with_key(tab, server.url)
    page.wait_for_selector("#samples:not([hidden]) .sample")
    page.locator(".sample").first.click()
    wait_for_answer(tab, 1)
    page.wait_for_selector("#live-totals[data-requests]")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow}px of horizontal scrolling at {width} px"
    box = {
        name: page.locator(f"section.{name}").bounding_box() for name in ("try", "live", "model")
    }
    if width >= 1100:  # two columns: the live panel beside the controls, in the first screen
        assert box["live"]["x"] > box["try"]["x"] + box["try"]["width"] - 1
        assert box["live"]["y"] < height
    else:  # one column, nothing wider than the screen
        assert box["live"]["y"] >= box["try"]["y"] + box["try"]["height"]
        for name in box:
            assert box[name]["x"] >= 0 and box[name]["x"] + box[name]["width"] <= width
    strip = page.locator("#results svg.strip").first.bounding_box()
    assert strip["x"] + strip["width"] <= width
    assert page.locator("#budget").bounding_box()["width"] > 150
