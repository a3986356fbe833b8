"""The host's TCP counters around an open-loop run: what the server cannot see.

A connection the kernel drops at the listening socket (its accept queue full: a burst of new
connections while the event loop is busy) is retried by the client only after a retransmission
timeout, 0.2 s to seconds later. The server's clock starts when the request's bytes arrive, so it
never sees that wait; the client's latency includes it. Reported per run so a latency tail of
that size can be told apart from one the server made. Host-wide (Linux ``/proc/net/netstat``):
run nothing else that makes connections while measuring.
"""

from __future__ import annotations

from pathlib import Path

NETSTAT = Path("/proc/net/netstat")
# TcpExt fields: drops at a listening socket (its accept queue full, among other reasons), and
# retransmission timeouts (any connection's).
COUNTERS = {"listen_drops": "ListenDrops", "tcp_timeouts": "TCPTimeouts"}


def read(path: Path = NETSTAT) -> dict[str, int] | None:
    """The counters now, or None where the file is not there (not Linux) or lacks them."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    ext = [line.split()[1:] for line in lines if line.startswith("TcpExt:")]
    if len(ext) < 2 or len(ext[0]) != len(ext[1]):
        return None
    values = dict(zip(ext[0], ext[1], strict=True))
    if not all(name in values for name in COUNTERS.values()):
        return None
    return {key: int(values[name]) for key, name in COUNTERS.items()}


def delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int | None]:
    """How much each counter grew between two readings (None where either is missing)."""
    return {
        key: None if before is None or after is None else after[key] - before[key]
        for key in COUNTERS
    }
