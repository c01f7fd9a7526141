"""Code shown in docs/servers.rst; run by the test suite so the docs stay true."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

from pytest_netthreads import HandlerError, ServerConnection, ThreadedServer, handlers


# [echo-fixture]
def test_echo(echo_server):
    with socket.create_connection(echo_server.address, timeout=5) as s:
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
# [/echo-fixture]


# [custom-handler]
def upper(conn: ServerConnection) -> None:
    """Read lines, answer each in upper case: called once per connection, in a thread."""
    with conn.makefile("rb") as lines:
        for line in lines:
            conn.sendall(line.upper())


def test_upper(server_factory):
    srv = server_factory(upper)
    with socket.create_connection(srv.address, timeout=5) as s:
        s.sendall(b"hello\n")
        assert s.recv(6) == b"HELLO\n"
    (record,) = srv.wait_for_connections(1, closed=True)
    assert (record.bytes_in, record.bytes_out, record.how_closed) == (6, 6, "peer-eof")
# [/custom-handler]


# [http]
def test_http_client(server_factory):
    responder = handlers.HTTPResponder(handlers.HTTPResponse(201, b"made", [("X-Id", "7")]))
    srv = server_factory(responder)
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    conn.request("POST", "/things", body=b"{}")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("X-Id"), resp.read()) == (201, "7", b"made")
    conn.close()
    assert responder.requests[0].path == "/things"
# [/http]


# [plain-python]
def test_without_pytest_fixtures():
    def fails(conn: ServerConnection) -> None:
        raise ValueError("bad frame")

    srv = ThreadedServer(fails, concurrency="pool", max_workers=4).start()
    socket.create_connection(srv.address, timeout=5).close()
    srv.wait_for_connections(1, closed=True)
    with pytest.raises(HandlerError, match="bad frame"):
        srv.stop()  # the handler's exception, with its server-side traceback
# [/plain-python]


# [blocked]
def test_stop_wakes_blocked_handlers():
    entered = threading.Event()

    def waits(conn: ServerConnection) -> None:
        entered.set()
        conn.recv(1)  # returns b"" when stop() shuts the connection down

    with ThreadedServer(waits) as srv:
        client = socket.create_connection(srv.address, timeout=5)
        assert entered.wait(5)
    assert srv.connections[0].how_closed == "server-stop"
    client.close()
# [/blocked]
