"""In-process socket faults (SocketFaults) on real client sockets against real servers."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator

import pytest
import urllib3

from pytest_netthreads import ServerConnection, ThreadedServer, handlers
from pytest_netthreads._runtime.reactor import get_reactor
from pytest_netthreads.faults import (
    RecvChunks,
    RecvError,
    SendError,
    ShortSends,
    SocketFaults,
)
from pytest_netthreads.faults.insocket import patched
from tests._util import connect, recv_exactly

pytestmark = pytest.mark.usefixtures("_reactor_running", "no_thread_or_fd_leak")


@pytest.fixture(scope="module")
def _reactor_running() -> None:
    get_reactor().start()


@pytest.fixture
def banner() -> Iterator[ThreadedServer]:
    with ThreadedServer(handlers.Banner(b"abcdefghij")) as server:
        yield server


@pytest.fixture
def echo() -> Iterator[ThreadedServer]:
    with ThreadedServer(handlers.echo, concurrency="selector") as server:
        yield server


def _reads(sock: socket.socket) -> list[bytes]:
    out = []
    while chunk := sock.recv(100):
        out.append(chunk)
    return out


def test_recv_returns_the_scripted_pieces_exactly(banner: ThreadedServer) -> None:
    with SocketFaults(RecvChunks([1, 2, 3]), address=banner.address) as sf:
        with connect(banner.address) as sock:
            assert _reads(sock) == [b"a", b"bc", b"def", b"ghij"]
    (record,) = sf.sockets
    assert record.bytes_received == 10 and record.recv_calls == 5
    assert not patched()


def test_cycled_chunks_through_recv_into(banner: ThreadedServer) -> None:
    with SocketFaults(RecvChunks([3], cycle=True)):
        with connect(banner.address) as sock:
            buf = bytearray(100)
            sizes = []
            while n := sock.recv_into(buf):
                sizes.append(n)
    assert sizes == [3, 3, 3, 1]


def test_only_sockets_to_the_given_address_are_faulted(
    banner: ThreadedServer, echo: ThreadedServer
) -> None:
    with SocketFaults(RecvChunks([1], cycle=True), address=echo.address) as sf:
        with connect(banner.address) as sock:
            assert _reads(sock) == [b"abcdefghij"]
        with connect(echo.address) as sock:
            sock.sendall(b"xyz")
            assert [sock.recv(10) for _ in range(3)] == [b"x", b"y", b"z"]
    assert [s.peer for s in sf.sockets] == [banner.address, echo.address]


def test_short_sends_and_sendall_delivers_everything() -> None:
    received = bytearray()

    def collect(conn: ServerConnection) -> None:
        while chunk := conn.recv(65536):
            received.extend(chunk)

    with ThreadedServer(collect) as server:
        with SocketFaults(ShortSends([3, 1], cycle=True), address=server.address) as sf:
            with connect(server.address) as sock:
                assert sock.send(b"0123456789") == 3
                assert sock.send(b"3456789") == 1
                sock.sendall(b"456789")
        server.wait_for_connections(1, closed=True)
    assert bytes(received) == b"0123456789"
    assert sf.sockets[0].send_calls == 5  # 3, 1, then sendall as 3, 1, 2


def test_timeout_after_n_bytes(banner: ThreadedServer) -> None:
    with SocketFaults(RecvError(TimeoutError, after_bytes=4)) as sf:
        with connect(banner.address) as sock:
            assert recv_exactly(sock, 4) == b"abcd"
            with pytest.raises(socket.timeout, match="timed out"):
                sock.recv(100)
            sf.clear()
            assert _reads(sock) == [b"efghij"]  # read to the end: closing early would RST
    (event,) = sf.log
    assert (event.operation, event.offset) == ("recv", 4)


def test_reset_at_the_kth_call(banner: ThreadedServer) -> None:
    with SocketFaults(RecvChunks([2], cycle=True), RecvError(ConnectionResetError, at_call=3)):
        with connect(banner.address) as sock:
            assert sock.recv(100) == b"ab"
            assert sock.recv(100) == b"cd"
            with pytest.raises(ConnectionResetError) as info:
                sock.recv(100)
            assert info.value.errno == 104
            assert sock.recv(100) == b"ef"  # at_call fires once
            assert b"".join(_reads(sock)) == b"ghij"


def test_broken_pipe_after_n_bytes_sent() -> None:
    received = bytearray()

    def collect(conn: ServerConnection) -> None:
        while chunk := conn.recv(65536):
            received.extend(chunk)

    with ThreadedServer(collect) as server:
        with SocketFaults(SendError(BrokenPipeError, after_bytes=5)):
            with connect(server.address) as sock:
                with pytest.raises(BrokenPipeError):
                    sock.sendall(b"0123456789")
        server.wait_for_connections(1, closed=True)
    assert bytes(received) == b"01234"


def test_http_client_reads_through_makefile_one_byte_at_a_time() -> None:
    body = b"hello, partial reads" * 20
    with ThreadedServer(handlers.HTTPResponder(body)) as server:
        with SocketFaults(RecvChunks([1], cycle=True), address=server.address) as sf:
            conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                assert response.status == 200
                assert response.read() == body
            finally:
                conn.close()
    (record,) = sf.sockets
    assert record.recv_calls >= len(body)  # every read was one byte


def test_urllib3_sees_a_read_timeout_mid_body() -> None:
    body = b"x" * 1000
    with ThreadedServer(handlers.HTTPResponder(body)) as server:
        with SocketFaults(RecvError(TimeoutError, after_bytes=100), address=server.address):
            with urllib3.PoolManager(retries=False, timeout=10) as pool:
                with pytest.raises(urllib3.exceptions.ReadTimeoutError):
                    pool.request("GET", server.url + "/")


def test_tls_faults_act_on_the_plaintext(
    tls_echo_server: ThreadedServer, tls_client_context: ssl.SSLContext
) -> None:
    with SocketFaults(RecvChunks([1, 2], cycle=True), address=tls_echo_server.address) as sf:
        raw = connect(tls_echo_server.address)
        with tls_client_context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"secret")
            assert recv_exactly(sock, 6) == b"secret"
            sock.sendall(b"abc")
            assert [sock.recv(10) for _ in range(2)] == [b"a", b"bc"]
    tls = [s for s in sf.sockets if s.tls]
    assert len(tls) == 1 and tls[0].bytes_received == 9


def test_faults_added_later_act_on_open_sockets(echo: ThreadedServer) -> None:
    with SocketFaults() as sf, connect(echo.address) as sock:
        sock.sendall(b"ab")
        assert recv_exactly(sock, 2) == b"ab"
        with sf.add(RecvChunks([1], cycle=True)):
            sock.sendall(b"cd")
            assert sock.recv(10) == b"c"
            assert sock.recv(10) == b"d"
        sock.sendall(b"ef")
        assert recv_exactly(sock, 2) == b"ef"


def test_undo_restores_the_socket_classes() -> None:
    before = (socket.socket.__dict__.copy(), ssl.SSLSocket.__dict__.copy())
    outer = SocketFaults().install()
    inner = SocketFaults().install()
    assert patched()
    inner.undo()
    assert patched()  # the outer one is still installed
    outer.undo()
    outer.undo()
    assert not patched()
    assert (dict(socket.socket.__dict__), dict(ssl.SSLSocket.__dict__)) == (
        dict(before[0]),
        dict(before[1]),
    )


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: RecvChunks([]), ValueError, "sizes must hold at least one"),
        (lambda: RecvChunks([0]), ValueError, r"sizes\[...\] must be an int >= 1"),
        (lambda: RecvChunks(b"ab"), TypeError, "sizes must be a sequence"),
        (lambda: ShortSends([1, -1]), ValueError, "sizes"),
        (lambda: RecvError(TimeoutError), ValueError, "exactly one of after_bytes"),
        (lambda: RecvError("boom", at_call=1), TypeError, "error must be an exception"),  # type: ignore[arg-type]
        (lambda: SendError(OSError, at_call=0), ValueError, "at_call must be an int >= 1"),
        (lambda: SocketFaults(address=("127.0.0.1", 1)), ValueError, "need faults"),
        (lambda: SocketFaults().add(RecvChunks([1]), address=42), TypeError, "address must"),
        # A rule for port 70000 used to be accepted and then match nothing, silently.
        (lambda: SocketFaults().add(RecvChunks([1]), address=("127.0.0.1", 70000)), ValueError,
         "address port must be from 1 to 65535, got 70000"),
        (lambda: SocketFaults().add(RecvChunks([1]), address=("127.0.0.1", "80")), TypeError,
         "address port must be an int"),
        (lambda: SocketFaults().add("x"), TypeError, "in-process socket faults"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments(make: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()  # type: ignore[operator]
