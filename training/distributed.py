"""Device choice and the process group for ``torchrun`` (DDP: NCCL on GPUs, gloo on CPUs).

Started by ``torchrun``, every process finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its
environment; process ``LOCAL_RANK`` of a node uses GPU ``LOCAL_RANK``. Without them the run is
a single process. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from exitwise.devices import resolve_device as resolve_any_device
from exitwise.errors import ExitwiseError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ExitwiseError(f"environment variable {name}={raw!r} is not an integer") from None


def env_context() -> DistContext:
    """The process's place in a ``torchrun`` job (rank 0 of 1 outside one)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ExitwiseError(f"RANK={rank} / WORLD_SIZE={world} do not describe a process group")
    return DistContext(rank=rank, world=world, local_rank=local)


def resolve_device(preference: str, ctx: DistContext) -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ExitwiseError(f"device must be auto, cpu or cuda, not {preference!r}")
    if resolve_any_device(preference).type == "cpu":
        return torch.device("cpu")
    if ctx.local_rank >= torch.cuda.device_count():
        raise ExitwiseError(
            f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} GPUs on this node"
        )
    torch.cuda.set_device(ctx.local_rank)
    return torch.device("cuda", ctx.local_rank)


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    if not ctx.active or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    # Rank 0 evaluates and writes the bundle at the end; allow the others to wait for it.
    dist.init_process_group(backend, timeout=timedelta(minutes=60), **kwargs)  # type: ignore[arg-type]


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Give every process rank 0's parameters and buffers (the WPN is not wrapped in DDP)."""
    if not ctx.active:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.active:
        dist.all_reduce(t)
    return t


def check_replicas(modules: list[nn.Module], ctx: DistContext) -> None:
    """Fail loudly if the processes' parameters drifted apart (they are updated identically)."""
    if not ctx.active:
        return
    with torch.no_grad():
        params = [p.detach().double().sum() for m in modules for p in m.parameters()]
        local = torch.stack(params) if params else torch.zeros(1, dtype=torch.float64)
        device = next((p.device for m in modules for p in m.parameters()), local.device)
        local = local.to(device)
        gathered = [torch.empty_like(local) for _ in range(ctx.world)]
        dist.all_gather(gathered, local)
    if any(not torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError("the processes' parameters differ: data-parallel training went wrong")
