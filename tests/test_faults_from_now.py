"""SocketFaults rules that count from when they were added (``from_now=True``): a pooled
connection's next read or send can be targeted. Real clients (requests, urllib3) keep their
connection alive against the kit's HTTP responder."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import requests
import urllib3

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads._runtime.reactor import get_reactor
from pytest_netthreads.faults import RecvChunks, RecvError, SendError, SocketFaults
from tests._util import connect, recv_exactly

pytestmark = pytest.mark.usefixtures("_reactor_running", "no_thread_or_fd_leak")


@pytest.fixture(scope="module")
def _reactor_running() -> None:
    get_reactor().start()


@pytest.fixture
def http() -> Iterator[ThreadedServer]:
    with ThreadedServer(handlers.HTTPResponder(b"hello")) as server:
        yield server


def test_fails_the_second_request_on_a_kept_alive_connection(
    http: ThreadedServer, socket_faults: SocketFaults
) -> None:
    url = f"http://{http.host}:{http.port}/"
    with requests.Session() as session:
        assert session.get(url, timeout=10).text == "hello"
        (pooled,) = socket_faults.sockets
        reads_so_far = pooled.recv_calls
        assert reads_so_far >= 1
        with socket_faults.add(
            RecvError(ConnectionResetError, at_call=1), address=http.address, from_now=True
        ):
            with pytest.raises(requests.ConnectionError, match="ECONNRESET"):
                session.get(url, timeout=10)
        assert len(socket_faults.sockets) == 1  # the same, pooled connection
        (event,) = socket_faults.log
        assert (event.socket, event.operation) == (0, "recv")
        assert event.call == reads_so_far + 1  # its next read, counted from its first
        assert session.get(url, timeout=10).text == "hello"  # the rule is gone
    # The server answered the second request too: the failure was the client's read.
    assert [r.path for r in http.handler.requests] == ["/"] * 3  # type: ignore[attr-defined]
    # http.client's response (kept by the traceback's frames, a cycle) holds the failed
    # socket's makefile(): urllib3 closed the socket, its descriptor goes with the cycle.
    gc.collect()


def test_without_from_now_a_pooled_connection_has_passed_call_1(http: ThreadedServer) -> None:
    with SocketFaults() as sf, urllib3.PoolManager(retries=False) as pool:
        url = f"http://{http.host}:{http.port}/"
        assert pool.request("GET", url, timeout=10).data == b"hello"
        with sf.add(RecvError(ConnectionResetError, at_call=1), address=http.address):
            assert pool.request("GET", url, timeout=10).data == b"hello"
        assert sf.log == []
        sends_so_far = sf.sockets[0].send_calls
        with sf.add(SendError(ConnectionAbortedError, at_call=1), address=http.address,
                    from_now=True):
            with pytest.raises(urllib3.exceptions.ProtocolError):
                pool.request("GET", url, timeout=10)
        (event,) = sf.log
        assert event.operation == "send" and event.call == sends_so_far + 1
        assert len(sf.sockets) == 1


def test_sockets_connected_after_the_rule_count_from_their_first_call(
    http: ThreadedServer,
) -> None:
    with SocketFaults() as sf, urllib3.PoolManager(retries=False) as pool:
        sf.add(RecvError(TimeoutError, at_call=1), address=http.address, from_now=True)
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            pool.request("GET", f"http://{http.host}:{http.port}/", timeout=10)
        (event,) = sf.log
        assert event.call == 1


def test_chunks_and_bytes_count_from_now() -> None:
    with ThreadedServer(handlers.echo, concurrency="selector") as echo, SocketFaults() as sf:
        with connect(echo.address) as sock:
            sock.sendall(b"abcdef")
            assert recv_exactly(sock, 6) == b"abcdef"
            sf.add(RecvChunks([2, 1]), RecvError(ConnectionResetError, after_bytes=4),
                   address=echo.address, from_now=True)
            sock.sendall(b"ghijkl")
            assert [sock.recv(100) for _ in range(3)] == [b"gh", b"i", b"j"]
            with pytest.raises(ConnectionResetError):
                sock.recv(100)
        (event,) = sf.log
        assert event.offset == 10  # the socket's own count: 6 before the rule, 4 after


def test_from_now_must_be_a_bool(http: ThreadedServer) -> None:
    with SocketFaults() as sf:
        with pytest.raises(TypeError, match="from_now must be a bool, got 'yes'"):
            sf.add(RecvChunks([1]), from_now="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="from_now must be a bool, got 1"):
            sf.add(RecvChunks([1]), from_now=1)  # type: ignore[arg-type]
