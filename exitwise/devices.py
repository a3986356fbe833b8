"""Device names (``auto``, ``cpu``, ``cuda``, ``cuda:N``) to torch devices, one rule everywhere."""

from __future__ import annotations

import torch

from .errors import ExitwiseError


class DeviceError(ExitwiseError):
    """A device that does not exist on this machine, or a CPU where a GPU is required."""


def resolve_device(name: str, *, require_gpu: bool = False) -> torch.device:
    """``auto`` is the first CUDA GPU when one is available, else the CPU; ``cuda`` is ``cuda:0``.

    A CUDA device without a GPU (or beyond the GPUs present) is refused, and so is any CPU
    result when ``require_gpu`` is set.
    """
    has_cuda = torch.cuda.is_available()
    if name == "auto":
        device = torch.device("cuda", 0) if has_cuda else torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", 0)
    if require_gpu and device.type != "cuda":
        raise DeviceError(
            "a GPU is required (--require-gpu) but no CUDA GPU is available"
            if name == "auto" or not has_cuda
            else f"a GPU is required (--require-gpu) but device {name!r} was asked for"
        )
    if device.type == "cuda":
        if not has_cuda:
            raise DeviceError(f"device {name!r} asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return device
