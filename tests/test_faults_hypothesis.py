"""Hypothesis strategies: chunkings that shrink to the minimal split, and fault plans.

The framing-bug test is the point: a naive line reader that treats each ``recv`` as whole
lines passes every test that reads from a fast loopback socket, and Hypothesis, cutting
the stream with in-process faults, finds the one-byte split that breaks it.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads.faults import FaultProxy, Lines, ProxyFault, RecvChunks, SocketFaults
from pytest_netthreads.faults.strategies import (
    chunkings,
    fault_plans,
    message_triggers,
    proxy_faults,
    recv_chunks,
    triggered_faults,
)
from tests._util import connect

LINES = b"PING\nSET k v\nGET k\n"
EXPECTED = [b"PING", b"SET k v", b"GET k"]
_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def naive_lines(sock: socket.socket) -> list[bytes]:
    """The bug: every recv is assumed to end at a line boundary."""
    lines: list[bytes] = []
    while chunk := sock.recv(4096):
        lines.extend(part for part in chunk.split(b"\n") if part)
    return lines


def buffered_lines(sock: socket.socket) -> list[bytes]:
    """The fix: keep the incomplete tail until its newline arrives."""
    lines: list[bytes] = []
    pending = b""
    while chunk := sock.recv(4096):
        *complete, pending = (pending + chunk).split(b"\n")
        lines.extend(complete)
    return lines


@pytest.fixture(scope="module")
def line_server() -> Iterator[ThreadedServer]:
    with ThreadedServer(handlers.Banner(LINES)) as server:
        yield server


def read_with_chunks(
    server: ThreadedServer, sizes: list[int], reader: Callable[[socket.socket], list[bytes]]
) -> list[bytes]:
    with SocketFaults(RecvChunks(sizes), address=server.address):
        with connect(server.address) as sock:
            return reader(sock)


@given(length=st.integers(1, 200), data=st.data())
def test_chunkings_cover_the_stream(length: int, data: st.DataObject) -> None:
    sizes = data.draw(chunkings(length))
    assert sum(sizes) == length and all(size >= 1 for size in sizes)


def test_minimal_chunking_is_no_cut() -> None:
    assert find(chunkings(50), lambda sizes: True, settings=_SETTINGS) == [50]


def test_hypothesis_finds_the_framing_bug_and_its_minimal_split(
    line_server: ThreadedServer,
) -> None:
    # Without faults the naive reader looks fine: loopback delivers the banner in one read.
    assert read_with_chunks(line_server, [len(LINES)], naive_lines) == EXPECTED
    minimal = find(
        chunkings(len(LINES)),
        lambda sizes: read_with_chunks(line_server, sizes, naive_lines) != EXPECTED,
        settings=_SETTINGS,
    )
    assert minimal == [1, len(LINES) - 1]  # one cut, after the first byte


@_SETTINGS
@given(chunks=recv_chunks(len(LINES)))
def test_the_buffered_reader_survives_every_chunking(
    line_server: ThreadedServer, chunks: RecvChunks
) -> None:
    assert read_with_chunks(line_server, list(chunks.sizes), buffered_lines) == EXPECTED


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=fault_plans(max_faults=2, max_bytes=16, max_seconds=0.01), seed=st.integers(0, 99))
def test_fault_plans_run_against_a_real_echo_server(
    plan: tuple[ProxyFault, ...], seed: int
) -> None:
    # Whatever the plan, the client sees a prefix of what it sent (corruption aside), or
    # an error a client must be ready for; and the proxy itself never fails.
    payload = b"0123456789abcdef"
    with ThreadedServer(handlers.echo, concurrency="selector") as server:
        with FaultProxy(server, *plan, seed=seed) as proxy:
            received = bytearray()
            try:  # (a reset at once can even beat connect() to it)
                with socket.create_connection(proxy.address, timeout=0.5) as sock:
                    sock.sendall(payload)
                    while len(received) < len(payload) and (chunk := sock.recv(64)):
                        received += chunk
            except OSError:  # reset, timeout, broken pipe: what the plan asked for
                pass
            assert len(received) <= len(payload)
            if not any(type(f).__name__ == "Corrupt" for f in plan):
                assert payload.startswith(bytes(received))
        assert proxy.errors == []


@given(fault=proxy_faults())
def test_drawn_faults_are_valid_and_hashable(fault: ProxyFault) -> None:
    assert hash(fault) == hash(type(fault)(**fault.__dict__))


@given(fault=triggered_faults(Lines(), max_nth=4, max_bytes=8, max_seconds=0.01))
@_SETTINGS
def test_a_triggered_fault_leaves_the_messages_before_it_alone(
    echo_server: ThreadedServer, fault: ProxyFault
) -> None:
    # On the answers: a fault on the requests may reset both sides while an answer is on
    # its way, which is what a reset does.
    fault = dataclasses.replace(fault, direction="downstream")
    assert fault.on is not None and fault.on.nth is not None
    before = fault.on.nth - 1  # answers the fault must not touch
    if fault.on.at == "end":
        before += 1
    lines = [b"line %d\n" % i for i in range(5)]
    with FaultProxy(echo_server, fault, seed=1) as proxy:
        with connect(proxy.address, timeout=5) as sock, sock.makefile("rb") as rfile:
            sock.sendall(b"".join(lines))
            got = [rfile.readline() for _ in range(before)]
    assert got == lines[:before]


def test_message_triggers_refuse_a_bad_max_nth() -> None:
    with pytest.raises(ValueError, match="max_nth must be an int >= 1"):
        message_triggers(Lines(), max_nth=0)
