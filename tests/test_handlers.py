"""The reference handlers, each driven by a real client."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess

import pytest
import requests
import urllib3

from pytest_netthreads import HandlerError, ThreadedServer, handlers
from pytest_netthreads.handlers import (
    CloseStep,
    Expect,
    HTTPRequest,
    HTTPResponder,
    HTTPResponse,
    Script,
    Send,
)
from tests._util import connect, recv_exactly

NATIVE = ["thread", "selector"]


@pytest.mark.parametrize("concurrency", NATIVE)
def test_sink_reads_and_counts(concurrency: str) -> None:
    with ThreadedServer(handlers.sink, concurrency=concurrency) as srv:  # type: ignore[arg-type]
        with connect(srv.address) as client:
            for _ in range(10):
                client.sendall(b"z" * 65536)
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""  # the sink closes after EOF, never answers
        (record,) = srv.wait_for_connections(1, closed=True)
    assert (record.bytes_in, record.bytes_out, record.how_closed) == (655360, 0, "peer-eof")


@pytest.mark.parametrize("concurrency", NATIVE)
def test_blackhole_accepts_and_never_reads(concurrency: str) -> None:
    with ThreadedServer(handlers.blackhole, concurrency=concurrency) as srv:  # type: ignore[arg-type]
        with connect(srv.address, timeout=0.3) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sent = 0
            with pytest.raises(TimeoutError):  # the buffers fill: the peer never reads
                while True:
                    client.sendall(b"x" * 4096)
                    sent += 4096
            assert 0 < sent < 64 * 1024 * 1024
            with pytest.raises(TimeoutError):
                client.recv(1)
            srv.wait_for_connections(1)
            assert srv.connections[0].bytes_in == 0
    assert srv.connections[0].how_closed == "server-stop"


@pytest.mark.parametrize("concurrency", NATIVE)
def test_close_sends_fin_at_once(concurrency: str) -> None:
    with ThreadedServer(handlers.close, concurrency=concurrency) as srv:  # type: ignore[arg-type]
        with connect(srv.address) as client:
            client.sendall(b"request that is never answered")
            assert client.recv(100) == b""  # EOF, not a reset
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.how_closed == "handler"


@pytest.mark.parametrize("concurrency", NATIVE)
def test_reset_sends_rst_at_once(concurrency: str) -> None:
    with ThreadedServer(handlers.reset, concurrency=concurrency) as srv:  # type: ignore[arg-type]
        client = socket.socket()
        client.settimeout(10)
        try:
            # The reset may already be seen by connect() itself when it is that fast.
            with pytest.raises(ConnectionResetError):
                client.connect(srv.address)
                srv.wait_for_connections(1, closed=True)
                client.recv(100)
        finally:
            client.close()


def test_banner_then_close_and_banner_then_echo() -> None:
    with ThreadedServer(handlers.Banner(b"220 ready\r\n")) as srv, connect(srv.address) as c:
        assert recv_exactly(c, 11) == b"220 ready\r\n"
        assert c.recv(1) == b""
    banner_echo = handlers.Banner(b"hi\n", then=handlers.echo)
    with ThreadedServer(banner_echo) as srv, connect(srv.address) as c:
        assert recv_exactly(c, 3) == b"hi\n"
        c.sendall(b"again")
        assert recv_exactly(c, 5) == b"again"
    with pytest.raises(TypeError, match="data must be bytes"):
        handlers.Banner("text")  # type: ignore[arg-type]


def test_script_conversation_passes() -> None:
    script = Script(Expect(b"HELO x\r\n"), Send(b"250 hi\r\n"), Expect(b"QUIT\r\n"), CloseStep())
    with ThreadedServer(script) as srv, connect(srv.address) as c:
        c.sendall(b"HELO x\r\n")
        assert recv_exactly(c, 8) == b"250 hi\r\n"
        c.sendall(b"QUIT\r\n")
        assert c.recv(1) == b""


def test_script_mismatch_is_a_handler_error_showing_expected_and_got() -> None:
    srv = ThreadedServer(Script(Expect(b"HELO\r\n"), Send(b"250\r\n"))).start()
    with connect(srv.address) as c:
        c.sendall(b"EHLO\r\n")
        assert c.recv(10) == b""
    srv.wait_for_connections(1, closed=True)
    with pytest.raises(HandlerError) as info:
        srv.stop()
    assert "script step 0 (Expect): expected b'HELO\\r\\n', got b'EHLO\\r\\n'" in str(info.value)


def test_script_reset_step_and_bad_steps() -> None:
    # An RST discards what the client has not read yet, so the client acknowledges first.
    with ThreadedServer(Script(Send(b"bye"), Expect(b"ok"), CloseStep(reset=True))) as srv:
        with connect(srv.address) as c:
            assert recv_exactly(c, 3) == b"bye"
            c.sendall(b"ok")
            with pytest.raises(ConnectionResetError):
                while c.recv(10):
                    pass
    with pytest.raises(TypeError, match=r"steps\[1\] must be Expect, Send or CloseStep"):
        Script(Send(b"x"), b"raw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expect"):
        Expect(b"")


def _kv(c: socket.socket, line: bytes) -> bytes:
    c.sendall(line)
    reply = bytearray()
    while not reply.endswith(b"\n"):
        chunk = c.recv(1)
        assert chunk, "server closed"
        reply += chunk
    return bytes(reply)


@pytest.mark.parametrize("concurrency", ["thread", "pool"])
def test_key_value_protocol(concurrency: str) -> None:
    kv = handlers.KeyValue({"a": "1"})
    with ThreadedServer(kv, concurrency=concurrency) as srv, connect(srv.address) as c:  # type: ignore[arg-type]
        assert _kv(c, b"GET a\n") == b"VALUE 1\n"
        assert _kv(c, b"SET b two words\r\n") == b"OK\n"
        assert _kv(c, b"GET b\n") == b"VALUE two words\n"
        assert _kv(c, b"DEL b\n") == b"DELETED\n"
        assert _kv(c, b"DEL b\n") == b"NOT_FOUND\n"
        assert _kv(c, b"GET\n") == b"ERROR wrong arguments for GET\n"
        assert _kv(c, b"FLY me\n") == b"ERROR unknown command 'FLY'\n"
        assert _kv(c, b"\xff\n") == b"ERROR not utf-8\n"
        assert _kv(c, b"PING\n") == b"PONG\n"
        # Pipelined requests in one segment are answered in order.
        c.sendall(b"SET k v\nGET k\n")
        assert recv_exactly(c, len(b"OK\nVALUE v\n")) == b"OK\nVALUE v\n"
        assert _kv(c, b"QUIT\n") == b"BYE\n"
        assert c.recv(1) == b""
    assert kv.store == {"a": "1", "k": "v"}


def test_key_value_line_too_long_closes() -> None:
    with ThreadedServer(handlers.KeyValue(max_line=16)) as srv, connect(srv.address) as c:
        c.sendall(b"SET " + b"k" * 40 + b"\n")
        assert recv_exactly(c, 20) == b"ERROR line too long\n"
        assert c.recv(1) == b""


def routes(request: HTTPRequest) -> HTTPResponse:
    if request.path == "/echo":
        return HTTPResponse(200, request.body, [("Content-Type", "application/octet-stream")])
    if request.path == "/boom":
        raise RuntimeError("route exploded")
    return HTTPResponse(404, b"no such page")


def test_http_client_keep_alive_and_routes() -> None:
    responder = HTTPResponder(routes)
    with ThreadedServer(responder) as srv:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        conn.request("POST", "/echo", body=b"payload")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"payload")
        conn.request("GET", "/missing")
        resp = conn.getresponse()
        assert (resp.status, resp.reason, resp.read()) == (404, "Not Found", b"no such page")
        conn.request("HEAD", "/echo")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        conn.close()
        srv.wait_for_connections(1, closed=True)
    assert len(srv.connections) == 1  # one keep-alive connection served all three
    assert [r.method for r in responder.requests] == ["POST", "GET", "HEAD"]


def test_http_chunked_request_body_and_connection_close() -> None:
    responder = HTTPResponder(routes)
    with ThreadedServer(responder) as srv:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        conn.request("POST", "/echo", body=iter([b"ab", b"cde"]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked", "Connection": "close"})
        resp = conn.getresponse()
        assert resp.read() == b"abcde"
        assert resp.getheader("Connection") == "close"
        conn.close()
    assert responder.requests[0].header("transfer-encoding") == "chunked"


def test_http_urllib3_pool_reuses_connections() -> None:
    with ThreadedServer(HTTPResponder(b"hello")) as srv:
        with urllib3.PoolManager() as pool:
            for _ in range(5):
                resp = pool.request("GET", srv.url + "/x", timeout=10, retries=False)
                assert (resp.status, resp.data) == (200, b"hello")
        assert len(srv.connections) == 1


def test_http_requests_session() -> None:
    with ThreadedServer(HTTPResponder(routes), concurrency="pool") as srv:
        with requests.Session() as session:
            r = session.post(srv.url + "/echo", data=b"x" * 100_000, timeout=10)
            assert r.status_code == 200 and r.content == b"x" * 100_000
            assert session.get(srv.url + "/nope", timeout=10).status_code == 404


def _read_head(sock: socket.socket) -> bytes:
    """One response head (up to the blank line), read a byte at a time."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"the server closed after {bytes(head)!r}"
        head += byte
    return bytes(head)


def test_http_expect_100_continue_is_answered_before_the_body() -> None:
    responder = HTTPResponder(routes)
    with ThreadedServer(responder) as srv, connect(srv.address) as c:
        c.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        # The client waits for the go-ahead before sending its body (the socket's 10 s
        # timeout bounds it: a server that never answers fails here).
        assert _read_head(c) == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.sendall(b"hello")
        assert _read_head(c).startswith(b"HTTP/1.1 200 OK\r\n")
        assert recv_exactly(c, 5) == b"hello"
    assert responder.requests[0].body == b"hello"


def test_http_expect_100_continue_with_curl() -> None:
    # curl waits --expect100-timeout (60 s here) for the 100 before it sends the body anyway;
    # --max-time 30 makes a server that never answers the expectation fail the test.
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl; .ci/run does)")
    with ThreadedServer(HTTPResponder(routes)) as srv:
        proc = subprocess.run(
            [curl, "-sS", "--max-time", "30", "--expect100-timeout", "60",
             "-H", "Expect: 100-continue", "--data-binary", "@-", srv.url + "/echo"],
            input=b"body" * 1000, capture_output=True, timeout=60, check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"body" * 1000


def test_http_expectations_refused_or_ignored() -> None:
    with ThreadedServer(HTTPResponder(routes, max_body_bytes=10)) as srv:
        with connect(srv.address) as c:  # an expectation it cannot meet: 417, closed
            c.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: magic\r\n\r\n")
            assert _read_head(c).startswith(b"HTTP/1.1 417 Expectation Failed\r\n")
        with connect(srv.address) as c:  # too large: the 413 instead of the go-ahead
            c.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 11\r\n"
                      b"Expect: 100-continue\r\n\r\n")
            assert _read_head(c).startswith(b"HTTP/1.1 413 ")
        with connect(srv.address) as c:  # HTTP/1.0: the expectation is ignored (RFC 9110)
            c.sendall(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n"
                      b"Expect: 100-continue\r\n\r\nhi")
            assert _read_head(c).startswith(b"HTTP/1.1 200 OK\r\n")
            assert recv_exactly(c, 2) == b"hi"
    assert srv.errors == []


def test_http_route_error_gives_500_and_fails_the_server() -> None:
    srv = ThreadedServer(HTTPResponder(routes)).start()
    resp = urllib3.request("GET", srv.url + "/boom", timeout=10, retries=False)
    assert resp.status == 500
    srv.wait_for_connections(1, closed=True)
    with pytest.raises(HandlerError, match="route exploded"):
        srv.stop()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ],
)
def test_http_malformed_requests_get_4xx_and_close(raw: bytes, status: int) -> None:
    with ThreadedServer(HTTPResponder(b"ok")) as srv, connect(srv.address) as c:
        c.sendall(raw)
        reply = bytearray()
        while chunk := c.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 %d " % status)
    assert srv.errors == []
