#!/usr/bin/env python3
"""The whole pipeline on Fashion-MNIST, as `make demo` runs it.

1. train the demo recipe with L2W-DEN (`exitwise train --config configs/demo.yaml`), unless the
   bundle is already there (an interrupted run is resumed);
2. calibrate three budgets (`exitwise calibrate`), unless a calibration for these weights exists;
3. export per-stage ONNX graphs (`exitwise export`), unless an export for these weights exists;
4. start `exitwise serve` on 127.0.0.1:8000 in the background (replacing a demo server that is
   still running), send a few real test images at each budget, print what came back, and leave
   the server running with commands to try; the last line is the playground page's address.

    python scripts/demo.py            # the above
    python scripts/demo.py stop       # stop the demo server
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from exitwise.bundle import load_bundle  # noqa: E402
from exitwise.datasets import open_dataset  # noqa: E402
from exitwise.errors import ExitwiseError  # noqa: E402

# A few test images of different classes (indices into the Fashion-MNIST test split).
SAMPLE_INDICES = (0, 1, 2, 8, 13, 25)


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m" if sys.stdout.isatty() else f"==> {msg}", flush=True)


def exitwise(*args: str) -> None:
    cmd = [sys.executable, "-m", "cli", *args]
    print("$ exitwise " + shlex.join(args), flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        sys.exit(f"demo stopped: `exitwise {args[0]}` failed (see above)")


def calibrated(bundle_dir: Path) -> bool:
    try:
        load_bundle(bundle_dir).calibration()
        return True
    except ExitwiseError:
        return False


def exported(bundle_dir: Path) -> bool:
    try:
        from exports.runtime import load_onnx_runner

        load_onnx_runner(load_bundle(bundle_dir), device="cpu")
        return True
    except (ExitwiseError, ImportError):
        return False


def pid_file(bundle_dir: Path) -> Path:
    return bundle_dir / "demo-server.pid"


def stop_server(bundle_dir: Path) -> None:
    path = pid_file(bundle_dir)
    if not path.exists():
        return
    pid = int(path.read_text().strip() or 0)
    path.unlink()
    try:
        os.kill(pid, signal.SIGINT)  # SIGINT: stop at once, without the load-balancer drain
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            say(f"stopped the demo server (pid {pid})")
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def start_server(bundle_dir: Path, host: str, port: int, backend: str) -> str:
    url = f"http://{host}:{port}"
    try:
        httpx.get(f"{url}/healthz", timeout=0.5)
        sys.exit(
            f"demo stopped: something already listens on {host}:{port}; stop it or set DEMO_PORT"
        )
    except httpx.TransportError:
        pass
    log = bundle_dir / "demo-server.log"
    args = ["serve", str(bundle_dir), "--host", host, "--port", str(port), "--backend", backend]
    print(f"$ exitwise {shlex.join(args)} > {log.relative_to(REPO)} &", flush=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file(bundle_dir).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"demo stopped: the server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    sys.exit(f"demo stopped: the server was not ready after 120 s (see {log})")


def write_samples(bundle_dir: Path) -> list[tuple[Path, str]]:
    """Real test images as PNG files (for the requests below and for curl)."""
    test = open_dataset("fashion-mnist", "test")
    out_dir = bundle_dir / "samples"
    out_dir.mkdir(exist_ok=True)
    samples = []
    for i in SAMPLE_INDICES:
        truth = test.class_names[int(test.labels[i])]
        slug = truth.lower().replace("/", "-").replace(" ", "-")
        path = out_dir / f"test-{i:05d}-{slug}.png"
        buf = io.BytesIO()
        Image.fromarray(test.image(i)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
        samples.append((path, truth))
    return samples


def send_samples(url: str, budgets: list[float], samples: list[tuple[Path, str]]) -> None:
    header = (
        f"{'budget':>7}  {'image':<28} {'exit':>4} {'MFLOPs':>6}  {'prediction':<12} "
        f"{'truth':<12} {'ms':>6}"
    )
    print(header)
    print("-" * len(header))
    with httpx.Client(base_url=url, timeout=30) as client:
        for budget in budgets:
            right = 0
            spent = []
            for path, truth in samples:
                start = time.perf_counter()
                r = client.post(
                    "/v1/classify",
                    params={"budget_mflops": budget, "top_k": 0},
                    content=path.read_bytes(),
                    headers={"content-type": "image/png"},
                )
                ms = (time.perf_counter() - start) * 1000
                r.raise_for_status()
                res = r.json()["results"][0]
                right += res["class_name"] == truth
                spent.append(res["mflops"])
                mark = "" if res["class_name"] == truth else "  x"
                print(
                    f"{budget:>7g}  {path.name:<28} {res['exit']:>4} {res['mflops']:>6.2f}  "
                    f"{res['class_name']:<12} {truth:<12} {ms:>6.1f}{mark}"
                )
            point = r.json()["operating_point"]
            print(
                f"{'':>7}  operating point {point['name']}: "
                f"expected {point['expected_mflops']:.2f} "
                f"MFLOPs/image on average; these {len(samples)}: "
                f"{sum(spent) / len(spent):.2f} MFLOPs, {right}/{len(samples)} right"
            )
            print()


def trade_off(url: str) -> str:
    """One line: what each operating point costs and buys on the test split (calibration's
    figures, from /v1/model), against the full network and exit 1 alone."""
    model = httpx.get(f"{url}/v1/model", timeout=10).json()
    exits = model["exits"]
    full, first = exits[-1], exits[0]
    if full.get("test_accuracy") is None:
        return "the trade-off: not measured on a test split"
    parts = [f"full network {full['mflops']:.1f} MFLOPs {full['test_accuracy']:.1f} %"]
    for p in sorted(model["operating_points"], key=lambda p: -p["expected_mflops"]):
        if p["test"] is not None:
            cost = p["test"]["mflops"]
            parts.append(
                f"{p['name']} {cost:.1f} MFLOPs ({full['mflops'] / cost:.1f}x cheaper) "
                f"{p['test']['accuracy']:.1f} %"
            )
    parts.append(f"exit 1 alone {first['mflops']:.1f} MFLOPs {first['test_accuracy']:.1f} %")
    return "the trade-off on the test images (calibration's figures): " + " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", default="run", choices=["run", "stop"])
    parser.add_argument(
        "--bundle", type=Path, default=Path(os.environ.get("DEMO_BUNDLE", "runs/demo"))
    )
    parser.add_argument("--budgets", default=os.environ.get("DEMO_BUDGETS", "1.8,2.4,4"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "8000")))
    parser.add_argument(
        "--backend", default=os.environ.get("DEMO_BACKEND", "torch"), choices=["torch", "onnx"]
    )
    args = parser.parse_args()
    bundle_dir = (REPO / args.bundle).resolve()
    if args.action == "stop":
        stop_server(bundle_dir)
        return

    started = time.monotonic()
    if (bundle_dir / "manifest.json").exists():
        say(f"reusing the trained bundle in {args.bundle}")
    elif (bundle_dir / "checkpoints" / "last.pt").exists():
        say("resuming the interrupted demo training")
        exitwise("train", "--out", str(args.bundle), "--resume")
    else:
        say("training the demo model with L2W-DEN (a few minutes on a CPU)")
        exitwise("train", "--config", "configs/demo.yaml", "--out", str(args.bundle), "--overwrite")
    if calibrated(bundle_dir):
        say("reusing the calibration")
    else:
        say(f"calibrating budgets of {args.budgets} MFLOPs per image")
        exitwise("calibrate", str(args.bundle), "--budgets", args.budgets)
    if exported(bundle_dir):
        say("reusing the ONNX export")
    else:
        say("exporting one ONNX graph per stage (checked against PyTorch)")
        exitwise("export", str(args.bundle))

    stop_server(bundle_dir)
    say(f"starting the server on {args.host}:{args.port}")
    url = start_server(bundle_dir, args.host, args.port, args.backend)
    say(
        f"server ready, {time.monotonic() - started:.0f} s after the demo started; "
        "classifying real test images at each budget"
    )
    samples = write_samples(bundle_dir)
    budgets = [float(b) for b in args.budgets.split(",")]
    send_samples(url, budgets, samples)
    say(trade_off(url))

    sample = samples[0][0].relative_to(REPO)
    second = samples[1][0].relative_to(REPO)
    cli = os.path.relpath(Path(sys.executable).parent / "exitwise", REPO)
    say(f"the server keeps running at {url} (log: {args.bundle}/demo-server.log). Try:")
    print(f"""
  curl -s --data-binary @{sample} -H 'content-type: image/png' \\
       '{url}/v1/classify?budget_mflops=2.4&top_k=3'
  curl -s -F image=@{sample} -F image=@{second} -F max_exit=1 {url}/v1/classify
  curl -s {url}/v1/model
  curl -s {url}/metrics | grep -E '^exitwise_(exits_total|stage_batch_size_count)'
  {cli} bench http --url {url} --concurrency 8 --requests 400 --dataset fashion-mnist
  make demo-stop                          # stop the server
""")
    # Last, so it is what stays on screen: the page shows all of the above in a browser.
    say(f"the playground page (drop an image, move the budget, watch it exit): {url}/")


if __name__ == "__main__":
    main()
