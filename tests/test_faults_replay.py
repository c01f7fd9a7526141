"""The fault log records what each fault drew, so "same seed, same faults" can be checked on it.

Real connections through a real proxy to the kit's echo server. Each message waits for its
echo, so each read is one message and the draws depend on the seed alone.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads._runtime.reactor import get_reactor
from pytest_netthreads.faults import (
    Corrupt,
    FaultEvent,
    FaultProxy,
    Latency,
    LimitData,
    Slice,
)
from tests._util import recv_exactly

pytestmark = pytest.mark.usefixtures("_reactor_running", "no_thread_or_fd_leak")


@pytest.fixture(scope="module")
def _reactor_running() -> None:
    get_reactor().start()


@pytest.fixture
def echo() -> Iterator[ThreadedServer]:
    with ThreadedServer(handlers.echo, concurrency="selector") as server:
        yield server


PLAN = (
    LimitData(10**6, probability=0.5, direction="both"),
    Corrupt(rate=0.05, direction="both"),
    Latency(0.001, jitter=0.001, direction="both"),
    Slice(4, variation=3),
)


def _run(echo: ThreadedServer, seed: int) -> dict[tuple[int, str], list[FaultEvent]]:
    with FaultProxy(echo, *PLAN, seed=seed) as proxy:
        for _ in range(3):
            with socket.create_connection(proxy.address, timeout=10) as sock:
                for i in range(3):
                    sock.sendall(bytes([65 + i]) * 24)
                    recv_exactly(sock, 24)
        proxy.wait_for_connections(3, closed=True)
        return proxy.stream_logs()


def test_one_seed_gives_equal_logs_with_the_values_drawn(echo: ThreadedServer) -> None:
    first, second = _run(echo, 99), _run(echo, 99)
    assert first == second  # every event, its detail included (not its time)
    assert set(first) == {(c, d) for c in range(3) for d in ("upstream", "downstream")}
    events = [e for stream in first.values() for e in stream]
    details = {e.action: e.detail for e in events}
    # What was drawn is in the log, not only that a fault applied.
    assert details["chosen"].startswith("drew 0.") or details["skipped"].startswith("drew 0.")
    assert details["delay"].startswith("delay 0.00")
    assert details["cut"].startswith("sizes ")
    assert details["corrupt"].startswith("0x")
    other = _run(echo, 100)
    assert other != first
    assert [e.detail for s in other.values() for e in s] != [e.detail for e in events]


def test_details_say_what_was_done(echo: ThreadedServer) -> None:
    plan = (Corrupt(offsets=(1,), mask=0x0F), Latency(0.002, jitter=0.001), Slice(5, variation=2))
    with FaultProxy(echo, *plan, seed=5) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"ABCDEFGHIJKLMNOPQRSTUVWX")
            got = recv_exactly(sock, 24)
            sock.sendall(b"Z" * 24)
            recv_exactly(sock, 24)
        log = proxy.log
    (corrupt,) = [e for e in log if e.action == "corrupt"]
    assert (corrupt.offset, corrupt.detail) == (1, "0x42->0x4d")
    assert got[1] == 0x4D
    assert "corrupt (0x42->0x4d) Corrupt(" in str(corrupt)
    delays = [e for e in log if e.action in ("applied", "delay") and isinstance(e.fault, Latency)]
    assert [e.offset for e in delays] == [0, 24]  # one draw a chunk
    for event in delays:
        seconds = float(event.detail.removeprefix("delay ").removesuffix("s"))
        assert 0.001 <= seconds <= 0.003
    cuts = [e for e in log if e.action == "cut"]
    assert [e.offset for e in cuts] == [0, 24]
    for event in cuts:
        sizes = [int(n) for n in event.detail.removeprefix("sizes ").split(",")]
        assert sum(sizes) == 24 and all(1 <= n <= 7 for n in sizes)


def test_a_long_cut_shows_the_first_sizes_and_the_count(echo: ThreadedServer) -> None:
    with FaultProxy(echo, Slice(2, variation=1), seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"x" * 200)
            recv_exactly(sock, 200)
        log = proxy.log
    (cut,) = [e for e in log if e.action == "cut"]  # 200 bytes on loopback: one read
    shown, _, more = cut.detail.removeprefix("sizes ").partition(",... (")
    assert len(shown.split(",")) == 32 and more.endswith(" pieces)")
    assert 67 <= int(more.removesuffix(" pieces)")) <= 200
