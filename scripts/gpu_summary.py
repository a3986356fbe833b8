"""summary.md of a scripts/gpu-check.sh run, from what its parts wrote: the status of every part
(ok, failed, cut at its box, skipped and why), the machine, and the headline tables. Every part's
files are optional: a part that was cut or skipped leaves a line saying so, not a gap."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

VARIANTS = {
    "fp32": "torch fp32",
    "bf16": "torch bf16",
    "fp16": "torch fp16",
    "onnx-cuda": "onnxruntime, CUDA provider",
}


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _json(path: Path) -> Any:
    text = _read(path)
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _status(logs: Path) -> list[list[str]]:
    text = _read(logs / "status.tsv") or ""
    return [(line.split("\t") + [""] * 5)[:5] for line in text.splitlines() if line.strip()]


def _section(markdown: str, title: str) -> list[str]:
    """The lines of the ``## title`` section of ``markdown`` (without the heading)."""
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip() == title
            continue
        if inside:
            lines.append(line)
    return lines


def _machine(env: dict[str, Any] | None) -> str:
    if not env:
        return "unknown (no environment.json)"
    parts = [f"GPU {env['gpu']}" if env.get("gpu") else "no CUDA GPU"]
    if env.get("gpu_memory_gib"):
        parts[0] += f" ({env['gpu_memory_gib']} GiB, compute capability {env['capability']})"
    if env.get("driver"):
        parts.append(f"driver {env['driver']}")
    parts.append(f"torch {env.get('torch')} (CUDA {env.get('cuda_runtime')})")
    providers = ", ".join(env.get("onnxruntime_providers") or []) or "none"
    parts.append(f"onnxruntime {env.get('onnxruntime')} ({providers})")
    parts.append(f"Python {env.get('python')}, {env.get('cpu_count')} CPUs {env.get('cpu', '')}")
    return "; ".join(parts)


def _shared(res: Path, solo: dict[str, Any] | None) -> str | None:
    probes = [_json(p) for p in sorted(res.glob("train-shared-*.json"))]
    probes = [p for p in probes if p]
    if not probes or not solo:
        return None
    ms = [statistics.median(p["raw_ms"]["l2w_meta"]) for p in probes]
    alone = statistics.median(solo["raw_ms"]["l2w_meta"])
    return (
        f"{len(probes)} processes at once: an L2W iteration (meta step every iteration) took "
        f"{statistics.median(ms):.1f} ms in each (median) against {alone:.1f} ms alone, "
        f"{statistics.median(ms) / alone:.2f}x; together they did "
        f"{len(probes) * alone / statistics.median(ms):.2f}x the work of one."
    )


def write_summary(out: Path) -> str:
    logs = out / "logs"
    env = _json(logs / "environment.json")
    res = out / "docs" / "benchmarks" / f"gpu-{(env or {}).get('slug', 'none')}"
    lines = [f"# GPU check: {(env or {}).get('gpu') or 'no CUDA GPU (a dry run)'}", ""]
    lines += [f"Machine: {_machine(env)}.", ""]
    lines += ["| part | status | seconds | box (s) | notes |", "|---|---|---|---|---|"]
    for name, status, secs, box, notes in _status(logs):
        notes = notes.replace("|", "/").replace(";", "; ")
        lines.append(f"| {name} | {status} | {secs} | {box} | {notes} |")
    lines.append("")

    tests = _read(res / "tests.txt")
    lines += ["## CUDA tests", ""]
    last = [ln for ln in (tests or "").splitlines() if ln.strip()]
    lines += [f"`{last[-1].strip('= ')}`" if last else "not run", ""]

    lines += ["## Serving: the demo bundle", ""]
    for key, label in VARIANTS.items():
        engine, http = _read(res / f"engine-{key}.md"), _read(res / f"http-{key}.md")
        if engine is None and http is None:
            continue
        lines += [f"### {label}", ""]
        if engine:
            lines += ["Engine (no HTTP), batch 1 and batched:", "", engine.strip(), ""]
        if http:
            lines += ["HTTP under load (wrk):", "", http.strip(), ""]
    if not list(res.glob("engine-*.md")):
        lines += ["no serving results", ""]

    lines += ["## Training step (bench train)", ""]
    train = _read(res / "train.md")  # bench train's file: a title, then one section per run
    keep = [ln for ln in (train or "").splitlines()
            if not ln.startswith(("# ", "<!--", "Written by "))]  # fmt: skip
    lines += ["\n".join(keep).strip() or "no result", ""]
    shared = _shared(res, _json(res / "train.json"))
    if shared:
        lines += [shared, ""]

    lines += ["## The comparison (docs/RESULTS-gpu.md)", ""]
    fit = _json(res / "fit.json")
    if fit:
        lines += [
            f"{fit['epochs']} epoch(s) of {fit['iterations_per_epoch']} iterations fitted to a "
            f"{fit['box_s']:.0f} s box (the recipe says {fit['recipe_epochs']}); estimated "
            f"{fit['estimated_total_s']:.0f} s with {fit['runs']} runs at once.",
            "",
        ]
    report = _read(out / "docs" / "RESULTS-gpu.md")
    if report:
        for title in ("Accuracy at fixed budgets (calibrated on held-out, measured on test)",
                      "Reading"):  # fmt: skip
            lines += [f"### {title}", *_section(report, title)]
    else:
        lines += ["no report: the comparison did not finish (see logs/compare.log)", ""]
    text = "\n".join(lines).rstrip() + "\n"
    (out / "summary.md").write_text(text)
    return text
