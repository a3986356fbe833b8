"""Replace a whole directory at once: readers see the old ``onnx/`` or the new one, never a mix.

The new directory is built in a temporary directory beside the target (same file system). On
Linux the two are swapped with ``renameat2(RENAME_EXCHANGE)``, one atomic step; elsewhere (or on
file systems without it) the old directory is renamed aside, the new one renamed into place and
the old one removed, which leaves a window of two renames in which the target is absent but
never half-written. A failed export removes its temporary directory and leaves the old export
untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _fsync(path: Path, directory: bool = False) -> None:
    # Not every platform lets a directory be opened for fsync; the renames are atomic anyway.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux >= 3.15, glibc >= 2.28); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def staging_directory(target: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``target`` (``.NAME.tmp-PID-*``); removed on exit
    whatever happened.

    Leftovers of interrupted runs are removed first; those of a process still running (another
    export of the same bundle) are left alone, so concurrent exports both finish (the last to
    publish wins, each export being complete).
    """
    parent = target.parent
    prefix = f".{target.name}.tmp-"
    for stale in parent.glob(prefix + "*"):
        pid = stale.name[len(prefix) :].split("-", 1)[0]
        if not (pid.isdigit() and _process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    try:
        yield tmp
    finally:
        # After publish() this holds the previous version (or nothing); either way it goes.
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, target: Path) -> None:
    """Make ``staged`` (a directory beside ``target``) the new ``target``."""
    for f in staged.iterdir():
        if f.is_file():
            _fsync(f)
    _fsync(staged, directory=True)
    parent = target.parent
    if not target.exists():
        os.rename(staged, target)
    elif not _exchange(staged, target):
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
        os.rename(target, aside / target.name)
        os.rename(staged, target)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync(parent, directory=True)
