"""The machine a benchmark ran on (CPU, GPU, software, threads), and device sync for timers.

torch (and onnxruntime) are imported only inside the functions that need them, so the
calibration benchmark (numpy only) does not pay for them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_cpu() -> str:
    """E.g. ``Intel(R) Xeon(R) Processor, 2 logical CPUs, Linux 6.1``."""
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def describe_machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """The machine a benchmark ran on: CPU, GPU (when ``device`` is CUDA), software, threads."""
    import numpy as np
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    return {
        "cpu": describe_cpu(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "device": str(dev),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnxruntime": onnxruntime_version(),
        "threads": torch.get_num_threads(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """One sentence for a report: ``CPU (GPU ...); Python, torch, ...; N threads``."""
    hw = machine["cpu"] + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
    sw = f"Python {machine['python']}, torch {machine['torch']}"
    if machine.get("onnxruntime"):
        sw += f", onnxruntime {machine['onnxruntime']}"
    return f"{hw}; {sw}; {machine['threads']} torch threads"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer sees it (a no-op on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
