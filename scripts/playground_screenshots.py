#!/usr/bin/env python3
"""Screenshots of the playground page for the docs (docs/images/playground-*.png).

Serves BUNDLE (default runs/demo, from `make demo`) on a free port, sends a minute's worth of
mixed traffic (every operating point and two anytime exits, real test images) so the live panel
has something to show, then opens the page in the system Chromium through Playwright (the same
setup as the browser tests) at 1280x800 and at phone width, picks a held-out sample and a
budget, and saves the pictures (desktop, phone, the model card). Needs the data set (for the
samples and the traffic) and `/usr/bin/chromium`; downloads nothing.

    python scripts/playground_screenshots.py [--bundle runs/demo] [--out docs/images]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from exitwise.bundle import load_bundle  # noqa: E402
from exitwise.datasets import open_dataset  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(bundle: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", str(bundle), "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("the server was not ready after 120 s")


def traffic(url: str, bundle: Path, seconds: float, seed: int = 0) -> int:
    """Requests of 1-4 real test images at every operating point and two anytime caps."""
    test = open_dataset(load_bundle(bundle).manifest.dataset or "fashion-mnist", "test")
    model = httpx.get(f"{url}/v1/model").json()
    budgets: list[dict[str, float]] = [
        {"budget_mflops": p["expected_mflops"]} for p in model["operating_points"]
    ]
    budgets += [{"max_exit": 1}, {"max_exit": len(model["exits"])}]
    rng = random.Random(seed)
    sent = 0
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < end:
            files = []
            for _ in range(rng.randint(1, 4)):
                buf = io.BytesIO()
                Image.fromarray(test.image(rng.randrange(len(test)))).save(buf, format="PNG")
                files.append(("image", ("x.png", buf.getvalue(), "image/png")))
            client.post("/v1/classify", params=rng.choice(budgets), files=files).raise_for_status()
            sent += 1
            time.sleep(rng.uniform(0.02, 0.12))
    return sent


def shoot(url: str, out: Path) -> None:
    profile = tempfile.mkdtemp(prefix="exitwise-chromium-")
    try:
        with sync_playwright() as p:
            for name, size, scale in (("desktop", (1280, 800), 1), ("phone", (390, 844), 2)):
                context = p.chromium.launch_persistent_context(
                    profile, executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS,
                    viewport={"width": size[0], "height": size[1]}, device_scale_factor=scale,
                )  # fmt: skip
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector("#samples:not([hidden]) .sample")
                page.locator(".sample").nth(0).click()
                page.wait_for_selector("#results article")
                page.focus("#budget")
                page.keyboard.press("Home")
                page.keyboard.press("ArrowRight")
                page.wait_for_timeout(600)
                page.wait_for_selector("#live-totals[data-requests]")
                if name == "phone":  # the controls and the answer in the phone's first screen
                    page.evaluate("document.getElementById('try-h').scrollIntoView()")
                page.wait_for_timeout(300)
                path = out / f"playground-{name}.png"
                page.screenshot(path=str(path))
                shots = [path]
                if name == "desktop":  # and the model card, curve included, on its own
                    page.wait_for_selector("#curve:not([hidden])")
                    shots.append(out / "playground-model.png")
                    page.locator("section.model").screenshot(path=str(shots[-1]))
                for shot in shots:
                    Image.open(shot).save(shot, optimize=True)
                    print(f"{shot}: {shot.stat().st_size // 1024} KiB")
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--traffic-s", type=float, default=40.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = serve(args.bundle, Path(tmp) / "server.log")
        try:
            print(f"{traffic(url, args.bundle, args.traffic_s)} requests sent to {url}")
            shoot(url, args.out)
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(30)


if __name__ == "__main__":
    main()
