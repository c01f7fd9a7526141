"""In-process socket faults on asyncio clients: ``asyncio.open_connection``, the loop's
``sock_*`` methods, httpx's ``AsyncClient`` (anyio); and a rule that matches no socket
failing loudly instead of being silently ignored."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import httpx
import pytest

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads.faults import (
    RecvChunks,
    RecvError,
    SendError,
    ShortSends,
    SocketFaults,
    UnmatchedRuleError,
)

T = TypeVar("T")
_SUBPROCESS_TIMEOUT = 120
BODY = b"0123456789" * 100


def run(coro: Awaitable[T]) -> T:
    """Run ``coro`` in a fresh event loop, bounded (nothing here may hang the suite)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


async def echo_reads(address: tuple[str, int], data: bytes) -> list[bytes]:
    """Send ``data`` through ``asyncio.open_connection``; the pieces ``read()`` returned."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        await writer.drain()
        pieces: list[bytes] = []
        while sum(map(len, pieces)) < len(data):
            piece = await reader.read(100)
            if not piece:
                break
            pieces.append(piece)
        return pieces
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def test_open_connection_reads_are_cut(echo_server: ThreadedServer) -> None:
    with SocketFaults(RecvChunks([1, 2, 3]), address=echo_server.address) as sf:
        pieces = run(echo_reads(echo_server.address, b"hello world"))
    # The transport's recv calls return 1, 2, 3 bytes, then what is there (one or more).
    assert pieces[:3] == [b"h", b"el", b"lo "]
    assert b"".join(pieces) == b"hello world"
    (record,) = sf.sockets
    assert record.peer == echo_server.address
    assert record.bytes_received == record.bytes_sent == 11


def test_open_connection_sees_a_reset_after_some_bytes(echo_server: ThreadedServer) -> None:
    async def client() -> tuple[bytes, BaseException | None]:
        reader, writer = await asyncio.open_connection(*echo_server.address)
        try:
            writer.write(b"hello world")
            await writer.drain()
            first = await reader.read(100)
            try:
                await reader.read(100)
            except ConnectionResetError as exc:
                return first, exc
            return first, None
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    with SocketFaults(RecvError(ConnectionResetError, after_bytes=5)) as sf:
        first, error = run(client())
    assert first == b"hello"
    assert isinstance(error, ConnectionResetError), error
    assert "injected by SocketFaults" in str(error)
    (event,) = sf.log
    assert (event.operation, event.offset) == ("recv", 5)


def test_open_connection_read_times_out(echo_server: ThreadedServer) -> None:
    async def client() -> None:
        reader, writer = await asyncio.open_connection(*echo_server.address)
        try:
            writer.write(b"ping")
            await writer.drain()
            await reader.read(100)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    with SocketFaults(RecvError(TimeoutError, at_call=1), address=echo_server.address):
        # The builtin TimeoutError (socket.timeout), raised by the read: from Python 3.11 on
        # it is asyncio.TimeoutError too, on 3.10 only an asyncio client catching OSError or
        # TimeoutError sees it.
        with pytest.raises(TimeoutError, match="injected by SocketFaults"):
            run(client())


def test_loop_sock_methods(echo_server: ThreadedServer) -> None:
    async def client() -> list[bytes]:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        with sock:
            await loop.sock_connect(sock, echo_server.address)
            await loop.sock_sendall(sock, b"abcdef")
            pieces = []
            while sum(map(len, pieces)) < 6:
                pieces.append(await loop.sock_recv(sock, 100))
            with pytest.raises(BrokenPipeError):
                await loop.sock_sendall(sock, b"more")
            return pieces

    faults = (
        RecvChunks([2], cycle=True),
        ShortSends([1, 1]),
        SendError(BrokenPipeError, at_call=4),
    )
    with SocketFaults(*faults, address=echo_server.address) as sf:
        pieces = run(client())
    # At most 2 bytes a read (fewer when the echo of a 1-byte send is all there is yet).
    assert b"".join(pieces) == b"abcdef" and max(map(len, pieces)) <= 2, pieces
    (record,) = sf.sockets
    assert record.send_calls == 4  # 1 byte, 1 byte, the other 4, then the injected error
    assert record.bytes_sent == 6


@pytest.fixture
def http_server() -> Iterator[ThreadedServer]:
    with ThreadedServer(handlers.HTTPResponder(BODY)) as server:
        yield server


def test_httpx_async_client_reads_in_pieces(http_server: ThreadedServer) -> None:
    async def client() -> bytes:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            response = await http.get(f"http://{http_server.host}:{http_server.port}/")
            return response.content

    with SocketFaults(RecvChunks([7], cycle=True), address=http_server.address) as sf:
        assert run(client()) == BODY
    (record,) = sf.sockets
    assert record.bytes_received > len(BODY)
    assert record.recv_calls >= record.bytes_received // 7


def test_httpx_async_client_sees_a_reset(http_server: ThreadedServer) -> None:
    async def client() -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            await http.get(f"http://{http_server.host}:{http_server.port}/")

    with SocketFaults(RecvError(ConnectionResetError, after_bytes=10)) as sf:
        with pytest.raises(httpx.ReadError):
            run(client())
    (event,) = sf.log
    assert (event.operation, event.offset) == ("recv", 10)


def test_a_rule_that_matched_no_socket_raises(echo_server: ThreadedServer) -> None:
    # Connected before the faults were installed: never seen, so the rule cannot apply.
    with socket.create_connection(echo_server.address, timeout=10) as sock:
        with pytest.raises(UnmatchedRuleError) as info:
            with SocketFaults(RecvChunks([1]), address=echo_server.address):
                sock.sendall(b"abc")
                data = b""
                while len(data) < 3:
                    data += sock.recv(100)
        assert data == b"abc"  # not cut: the fault never applied
    message = str(info.value)
    assert "1 rule(s) matched no socket" in message
    assert "RecvChunks(sizes=(1,), cycle=False) for sockets connected to 127.0.0.1:" in message
    assert "test_faults_asyncio.py:" in message  # where the rule was added
    assert "no socket was connected while installed" in message
    assert [rule.faults for rule in info.value.rules] == [(RecvChunks([1]),)]


def test_a_rule_for_another_address_raises_and_names_the_sockets_seen(
    echo_server: ThreadedServer,
) -> None:
    with ThreadedServer(handlers.echo) as other:
        with pytest.raises(UnmatchedRuleError) as info:
            with SocketFaults(RecvChunks([1]), address=other.address):
                run(echo_reads(echo_server.address, b"abc"))
    message = str(info.value)
    assert f"socket #0 to 127.0.0.1:{echo_server.port}" in message
    assert f"for sockets connected to 127.0.0.1:{other.port}" in message


def test_an_optional_rule_may_match_nothing(echo_server: ThreadedServer) -> None:
    with SocketFaults() as sf:
        rule = sf.add(RecvChunks([1]), address=echo_server.address, required=False)
        matched = sf.add(RecvChunks([2]), match=lambda peer: False, required=False)
    assert rule.sockets == matched.sockets == []
    assert sf.unmatched() == [] and sf.format_unmatched() == ""


def test_a_rule_added_after_the_connection_counts_it(echo_server: ThreadedServer) -> None:
    with SocketFaults() as sf:
        with socket.create_connection(echo_server.address, timeout=10) as sock:
            rule = sf.add(RecvChunks([1]), address=echo_server.address)
            sock.sendall(b"ab")
            assert sock.recv(100) == b"a"
    assert [s.index for s in rule.sockets] == [0]


def test_required_is_checked() -> None:
    sf = SocketFaults()
    with pytest.raises(TypeError, match="required must be a bool, got 1"):
        sf.add(RecvChunks([1]), required=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="required must be a bool, got None"):
        SocketFaults(RecvChunks([1]), required=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="required= needs faults"):
        SocketFaults(required=False)
    assert sf.rules == []


def test_the_fixture_fails_loudly_on_a_rule_that_matched_no_socket(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import socket
        import pytest
        from pytest_netthreads import faults

        def test_connected_before(echo_server, request):
            sock = socket.create_connection(echo_server.address, timeout=10)
            socket_faults = request.getfixturevalue("socket_faults")
            socket_faults.add(faults.RecvChunks([1]), address=echo_server.address)
            with sock:
                sock.sendall(b"ab")
                assert sock.recv(100)  # not cut: passes for the wrong reason

        def test_failed_anyway(echo_server, socket_faults):
            fault = faults.RecvError(TimeoutError, at_call=1)
            socket_faults.add(fault, address=echo_server.address)
            assert False, "the client never connected"

        def test_optional(echo_server, socket_faults):
            socket_faults.add(faults.RecvChunks([1]), required=False)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=_SUBPROCESS_TIMEOUT)
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_connected_before*",
            "*SocketFaults: 1 rule(s) matched no socket, so their faults were never applied:",
            "*RecvChunks(sizes=(1,), cycle=False) for sockets connected to 127.0.0.1:*"
            "(added at *test_the_fixture_fails_loudly_on_a_rule_that_matched_no_socket.py:8"
            " in test_connected_before)",
            "*FAILED*test_failed_anyway*",
        ]
    )
    # The failed test shows the rule in its report (a likely cause), without a second error.
    result.stdout.fnmatch_lines(["*- socket_faults (call) -*",
                                 "*RecvError(*) for sockets connected to 127.0.0.1:*"])
    assert "ERROR at teardown of test_failed_anyway" not in result.stdout.str()


def test_asyncio_tls_is_faulted_below_tls(
    tls_echo_server: ThreadedServer, tls_client_context: ssl.SSLContext
) -> None:
    # asyncio runs TLS itself over the plain socket: the rule cuts the ciphertext (which the
    # TLS layer joins again) and counts ciphertext bytes; an error has its effect.
    async def client() -> bytes:
        reader, writer = await asyncio.open_connection(
            *tls_echo_server.address, ssl=tls_client_context, server_hostname="localhost"
        )
        try:
            writer.write(b"hello")
            await writer.drain()
            return await reader.readexactly(5)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    with SocketFaults(RecvChunks([1], cycle=True), address=tls_echo_server.address) as sf:
        assert run(client()) == b"hello"
    (record,) = sf.sockets
    assert not record.tls  # the plain socket below asyncio's TLS
    assert record.bytes_received > 100  # the handshake's and the records' bytes
    assert record.recv_calls >= record.bytes_received  # at most one byte a call

    with SocketFaults(RecvError(ConnectionResetError, at_call=1)):
        with pytest.raises(ConnectionResetError):
            run(client())  # during the handshake
