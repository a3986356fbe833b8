"""How many threads the server gives torch and the image decoder, from the cores it may use.

A process may be limited to fewer cores than the machine has (``taskset``, a container's CPU
set): what counts is the affinity mask, not ``os.cpu_count()``.
"""

from __future__ import annotations

import os

from .settings import Settings


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_torch_threads(workers: int, cores: int | None = None) -> int:
    """Intra-op threads per worker when none are set: half the cores, shared by the workers.

    The other half is for the event loop, HTTP parsing and image decoding. Giving torch every
    core makes its spin-waiting threads fight the engine's own threads: on a 2-core machine the
    demo model served at batch 1 took 16.8 ms per image with 2 threads and 3.5 ms with 1.
    """
    cores = cores or usable_cores()
    return max(1, cores // 2 // workers)


def torch_threads(settings: Settings) -> int:
    return settings.torch_threads or default_torch_threads(settings.workers)


def decode_threads(settings: Settings, cores: int | None = None) -> int:
    """Decoding threads; 0 means the engine's worker decodes each first-stage batch itself.

    Handing an image to a decoding thread and back costs more CPU than decoding a small image,
    so without a core to spare beside torch's the worker decodes (and normalises a whole
    batch's pixels in one call). With spare cores, a pool decodes while the network runs.
    """
    if settings.decode_threads is not None:
        return settings.decode_threads
    spare = (cores or usable_cores()) - torch_threads(settings) * settings.workers
    return 0 if spare < 1 else min(2, spare)
