"""The host's TCP counters around a benchmark run (benchmarks.tcp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import tcp

NETSTAT = """TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts
TcpExt: 3 10 11 42
IpExt: InNoRoutes InOctets
IpExt: 0 123
"""


def test_the_counters_are_read_from_netstat_and_their_growth_reported(tmp_path: Path) -> None:
    path = tmp_path / "netstat"
    path.write_text(NETSTAT)
    before = tcp.read(path)
    assert before == {"listen_drops": 11, "tcp_timeouts": 42}
    path.write_text(NETSTAT.replace("3 10 11 42", "3 15 16 50"))
    assert tcp.delta(before, tcp.read(path)) == {"listen_drops": 5, "tcp_timeouts": 8}


def test_no_counters_where_the_file_or_the_fields_are_missing(tmp_path: Path) -> None:
    assert tcp.read(tmp_path / "absent") is None
    path = tmp_path / "netstat"
    path.write_text("TcpExt: SyncookiesSent\nTcpExt: 3\n")
    assert tcp.read(path) is None
    path.write_text("TcpExt: A B\nTcpExt: 1\n")  # a header without its values
    assert tcp.read(path) is None
    assert tcp.delta(None, {"listen_drops": 1, "tcp_timeouts": 1}) == {
        "listen_drops": None,
        "tcp_timeouts": None,
    }


def test_this_host_has_them_where_it_is_linux() -> None:
    if not tcp.NETSTAT.exists():
        pytest.skip("no /proc/net/netstat (not Linux)")
    now = tcp.read()
    assert now is not None and all(v >= 0 for v in now.values())
