"""ThreadedServer driven through real sockets and threads, without pytest fixtures."""

from __future__ import annotations

import gc
import hashlib
import os
import socket
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

from pytest_netthreads import (
    HandlerError,
    ServerConnection,
    ServerStopTimeout,
    ThreadedServer,
    handlers,
)
from tests._util import connect, held_close, live_threads, open_fds, recv_exactly

MODELS = ["thread", "pool", "selector"]


@pytest.mark.parametrize("concurrency", MODELS)
def test_echo_round_trip_in_every_model(concurrency: str) -> None:
    with ThreadedServer(handlers.echo, concurrency=concurrency) as srv:  # type: ignore[arg-type]
        # Listening when start() returns: the first connect must succeed, no retry.
        with connect(srv.address) as client:
            client.sendall(b"hello")
            assert recv_exactly(client, 5) == b"hello"
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.bytes_in == record.bytes_out == 5
    assert record.how_closed == "peer-eof"
    assert record.peer[0] == "127.0.0.1"


def test_address_host_port_and_url() -> None:
    with ThreadedServer(handlers.echo) as srv:
        host, port = srv.address  # type: ignore[misc]
        assert (srv.host, srv.port) == (host, port) == ("127.0.0.1", port)
        assert port > 0
        assert srv.url == f"http://127.0.0.1:{port}"


def test_ipv6_loopback() -> None:
    with ThreadedServer(handlers.echo, host="::1") as srv:
        assert srv.host == "::1"
        assert srv.url == f"http://[::1]:{srv.port}"
        with socket.create_connection(srv.address, timeout=10) as client:  # type: ignore[arg-type]
            assert client.family == socket.AF_INET6
            client.sendall(b"v6")
            assert recv_exactly(client, 2) == b"v6"


@pytest.mark.parametrize("concurrency", ["thread", "selector"])
def test_unix_socket_in_a_temp_dir_removed_at_stop(concurrency: str) -> None:
    srv = ThreadedServer(handlers.echo, unix=True, concurrency=concurrency)  # type: ignore[arg-type]
    with srv:
        path = srv.address
        assert isinstance(path, str) and os.path.exists(path)
        with connect(path) as client:
            client.sendall(b"unix")
            assert recv_exactly(client, 4) == b"unix"
        with pytest.raises(AttributeError, match="no port"):
            _ = srv.port
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))


def test_unix_socket_at_a_given_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "kv.sock"
    with ThreadedServer(handlers.KeyValue(), unix=path) as srv:
        assert srv.address == str(path)
        with connect(srv.address) as client:
            client.sendall(b"PING\n")
            assert recv_exactly(client, 5) == b"PONG\n"
    assert not path.exists()


# -- bad input ------------------------------------------------------------------------------


def test_handler_must_be_callable() -> None:
    with pytest.raises(TypeError, match="handler must be a callable"):
        ThreadedServer("echo")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"host": "no such host.invalid"}, ValueError, "host='no such host.invalid'"),
        ({"host": 127}, TypeError, "host must be a str"),
        ({"port": 70000}, ValueError, "port must be from 0 to 65535"),
        ({"port": "80"}, TypeError, "port must be an int"),
        ({"concurrency": "fork"}, ValueError, "concurrency must be one of"),
        ({"max_workers": 0, "concurrency": "pool"}, ValueError, "max_workers must be at least 1"),
        ({"max_workers": 4}, ValueError, "max_workers is only used with concurrency='pool'"),
        ({"port": -1}, ValueError, "port must be from 0 to 65535, got -1"),
        ({"port": True}, TypeError, "port must be an int"),
        ({"stop_timeout": -1}, ValueError, "stop_timeout must be"),
        ({"stop_timeout": float("nan")}, ValueError, "stop_timeout must be a finite number"),
        ({"stop_timeout": float("inf")}, ValueError, "stop_timeout must be a finite number"),
        ({"stop_timeout": 1e300}, ValueError, r"stop_timeout must be .* and <= 9\.22"),
        ({"stop_timeout": "5"}, TypeError, "stop_timeout must be a finite number"),
        ({"tls_handshake_timeout": 0}, ValueError, "tls_handshake_timeout must be a finite"),
        ({"tls_handshake_timeout": "5"}, TypeError, "tls_handshake_timeout must be a finite"),
        ({"tls_handshake_timeout": float("inf")}, ValueError, "tls_handshake_timeout must be"),
        # floats skip some checks when in range: the edges of that range
        ({"stop_timeout": -0.5}, ValueError, "stop_timeout must be a finite number"),
        ({"tls_handshake_timeout": 0.0}, ValueError, "tls_handshake_timeout must be a finite"),
        ({"tls_handshake_timeout": -1.0}, ValueError, "tls_handshake_timeout must be a finite"),
        ({"tls_handshake_timeout": float("nan")}, ValueError, "tls_handshake_timeout must be"),
        ({"ssl_context": object()}, TypeError, "ssl_context must be an ssl.SSLContext"),
        ({"backlog": 0}, ValueError, "backlog must be from 1 to"),
        ({"backlog": 2**40}, ValueError, "backlog must be from 1 to"),
        ({"backlog": 1.5}, TypeError, "backlog must be an int"),
        ({"ignore_disconnects": "no"}, TypeError, "ignore_disconnects must be a bool"),
        ({"name": ""}, TypeError, "name must be a non-empty str"),
        ({"unix": 3}, TypeError, "unix must be True or a socket path"),
        ({"unix": ""}, ValueError, "unix must not be empty"),
        ({"unix": "/tmp/" + "x" * 200}, ValueError, "at most 107 bytes"),
        ({"unix": "/tmp/a\0b"}, ValueError, "must not contain a NUL"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict[str, object], error: type, match: str):
    with pytest.raises(error, match=match):
        ThreadedServer(handlers.echo, **kwargs)  # type: ignore[arg-type]


def test_stop_timeout_argument_is_checked_before_anything_stops() -> None:
    srv = ThreadedServer(handlers.echo).start()
    for bad, error in ((float("inf"), ValueError), (float("nan"), ValueError), (-1, ValueError),
                       (1e300, ValueError), ("1", TypeError)):
        with pytest.raises(error, match="timeout must be a finite number of seconds >= 0"):
            srv.stop(bad)  # type: ignore[arg-type]
        assert srv.running
    srv.stop()
    assert not srv.running


def test_wait_for_connections_checks_its_arguments() -> None:
    with ThreadedServer(handlers.echo) as srv:
        for kwargs, error, match in (
            ({"count": -1}, ValueError, "count must be an int >= 0"),
            ({"count": 1.0}, TypeError, "count must be an int"),
            ({"timeout": float("nan")}, ValueError, "timeout must be a finite number"),
            ({"timeout": float("inf")}, ValueError, "timeout must be a finite number"),
            ({"timeout": -1}, ValueError, "timeout must be a finite number"),
        ):
            with pytest.raises(error, match=match):
                srv.wait_for_connections(**kwargs)  # type: ignore[arg-type]


def test_a_too_long_temp_dir_for_a_unix_socket_is_named(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr("tempfile.tempdir", None)
    srv = ThreadedServer(handlers.echo, unix=True)
    with pytest.raises(ValueError, match=r"set TMPDIR shorter.*at most 107 bytes"):
        srv.start()
    assert not srv.running
    assert list(deep.iterdir()) == []  # the temporary directory was removed again


def test_selector_needs_a_native_handler() -> None:
    with pytest.raises(ValueError, match="concurrency='selector' needs a handler"):
        ThreadedServer(handlers.KeyValue(), concurrency="selector")


def test_port_in_use_names_the_address(no_thread_or_fd_leak: None) -> None:
    with ThreadedServer(handlers.echo) as first:
        second = ThreadedServer(handlers.echo, port=first.port)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}: address"):
            second.start()
        assert not second.running


def test_non_local_address_is_refused_with_its_name() -> None:
    srv = ThreadedServer(handlers.echo, host="192.0.2.1")  # TEST-NET-1, never local
    with pytest.raises(OSError, match=r"cannot listen on 192\.0\.2\.1:0: not an address"):
        srv.start()


def test_second_start_raises() -> None:
    srv = ThreadedServer(handlers.echo)
    with srv:
        with pytest.raises(RuntimeError, match="already started"):
            srv.start()
    with pytest.raises(RuntimeError, match="already started"):
        srv.start()
    srv.stop()  # stopping twice is harmless


# -- stop, errors, records ----------------------------------------------------------------


@pytest.mark.parametrize("concurrency", ["thread", "pool"])
def test_stop_is_bounded_with_handlers_blocked_in_recv(concurrency: str) -> None:
    entered = threading.Semaphore(0)

    def wait_in_recv(conn: ServerConnection) -> None:
        entered.release()
        assert conn.recv(1) == b""  # woken by stop()'s shutdown

    srv = ThreadedServer(wait_in_recv, concurrency=concurrency).start()  # type: ignore[arg-type]
    clients = [connect(srv.address) for _ in range(3)]
    try:
        for _ in clients:
            assert entered.acquire(timeout=10)
        srv.stop(timeout=10)
        records = srv.connections
        assert [r.how_closed for r in records] == ["server-stop"] * 3
        for client in clients:
            assert client.recv(1) == b""  # the server closed (FIN) the idle clients
    finally:
        for client in clients:
            client.close()


def test_stop_reports_a_thread_that_will_not_finish() -> None:
    release, entered = threading.Event(), threading.Event()

    def stuck_elsewhere(conn: ServerConnection) -> None:
        entered.set()
        release.wait(30)  # not the socket, not conn.stopping: stop() cannot wake it

    srv = ThreadedServer(stuck_elsewhere, name="stuck").start()
    client = connect(srv.address)
    try:
        assert entered.wait(10)
        with pytest.raises(ServerStopTimeout) as info:
            srv.stop(timeout=0.2)
    finally:
        release.set()
        client.close()
    message = str(info.value)
    assert "netthreads[stuck]#0" in message
    assert "in stuck_elsewhere" in message  # its current stack
    assert "release.wait(30)" in message
    assert [t.name for t in info.value.threads] == ["netthreads[stuck]#0"]
    for t in info.value.threads:
        t.join(10)


def boom(conn: ServerConnection) -> None:
    request = conn.recv(100)
    raise ValueError(f"cannot parse {request!r}")


@pytest.mark.parametrize("concurrency", ["thread", "pool"])
def test_handler_exception_is_raised_by_stop_with_server_traceback(concurrency: str) -> None:
    srv = ThreadedServer(boom, concurrency=concurrency).start()  # type: ignore[arg-type]
    with connect(srv.address) as client:
        client.sendall(b"GARBAGE")
        assert client.recv(10) == b""  # the server closed after the handler raised
    srv.wait_for_connections(1, closed=True)
    with pytest.raises(HandlerError) as info:
        srv.stop()
    message = str(info.value)
    assert "ValueError in connection #0 from 127.0.0.1:" in message
    assert "cannot parse b'GARBAGE'" in message
    assert ', in boom\n' in message  # the server-side traceback
    assert isinstance(info.value.exceptions[0], ValueError)
    assert srv.connections[0].how_closed == "error"


def test_check_raises_each_error_once() -> None:
    srv = ThreadedServer(boom).start()
    with connect(srv.address) as client:
        client.sendall(b"x")
        client.recv(1)
    srv.wait_for_connections(1, closed=True)
    with pytest.raises(HandlerError):
        srv.check()
    srv.check()  # already raised
    srv.stop()
    assert len(srv.errors) == 1


@pytest.mark.parametrize("concurrency", MODELS)
def test_clients_vanishing_mid_message_are_not_errors(concurrency: str) -> None:
    def read_a_framed_message(conn: ServerConnection) -> None:
        header = recv_exactly(conn, 4)
        body = recv_exactly(conn, int.from_bytes(header, "big"))
        conn.sendall(body)

    handler = handlers.echo if concurrency == "selector" else read_a_framed_message
    with ThreadedServer(handler, concurrency=concurrency) as srv:  # type: ignore[arg-type]
        for n in range(20):
            client = connect(srv.address)
            client.sendall((1000).to_bytes(4, "big") + b"x" * 10)
            if n % 2:  # half reset, half close politely
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            client.close()
        records = srv.wait_for_connections(20, closed=True)
    assert srv.errors == []
    assert {r.how_closed for r in records} <= {"peer-eof", "peer-reset", "handler"}


def test_disconnect_errors_fail_when_asked() -> None:
    def write_forever(conn: ServerConnection) -> None:
        while True:
            conn.sendall(b"x" * 65536)

    srv = ThreadedServer(write_forever, ignore_disconnects=False).start()
    client = connect(srv.address)
    client.recv(10)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    client.close()
    srv.wait_for_connections(1, closed=True)
    with pytest.raises(HandlerError, match=r"(ConnectionResetError|BrokenPipeError)"):
        srv.stop()


def test_records_count_bytes_both_ways_and_name_the_peer() -> None:
    with ThreadedServer(handlers.sink) as srv:
        with connect(srv.address) as client:
            client.sendall(b"a" * 100_000)
            local = client.getsockname()
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.peer == local
    assert record.bytes_in == 100_000 and record.bytes_out == 0
    assert record.how_closed == "peer-eof" and record.saw_eof
    assert record.duration is not None and record.duration >= 0
    assert record.thread_name == f"netthreads[{srv.name}]#0"


@pytest.mark.parametrize("concurrency", MODELS)
def test_a_record_says_how_its_connection_closed_before_the_client_can_see_the_close(
    monkeypatch: pytest.MonkeyPatch, concurrency: str
) -> None:
    # What the record said at the instant the server closed its side: a client that saw the
    # close and then read the record must not find it still open.
    at_close: list[tuple[object, bool]] = []
    original = socket.socket.close

    def close(sock: socket.socket) -> None:
        try:
            server_side = (
                sock.family == socket.AF_INET
                and sock.getsockname()[1] == port
                and sock.getpeername() is not None
            )
        except OSError:  # the listener (no peer), or closed already
            server_side = False
        if server_side:
            at_close.extend((r.how_closed, r.closed_at is not None) for r in srv.connections)
        original(sock)

    with ThreadedServer(handlers.echo, concurrency=concurrency) as srv:  # type: ignore[arg-type]
        port = srv.port
        monkeypatch.setattr(socket.socket, "close", close)
        with connect(srv.address) as client:
            client.sendall(b"x")
            assert recv_exactly(client, 1) == b"x"
        srv.wait_for_connections(1, closed=True)
        monkeypatch.undo()
    assert at_close == [("peer-eof", True)]


@pytest.mark.parametrize("concurrency", ["thread", "pool", "selector"])
def test_waiting_for_closed_connections_returns_once_the_server_socket_is_closed(
    concurrency: str,
) -> None:
    # The record says "closed" a moment before the server closes its socket (so that a
    # client that saw the close finds the record closed). A test waiting for the closed
    # connection must not get in between: here the server's close is held until a timer
    # lets it go, and the wait must return after it, not when the record was marked.
    with ThreadedServer(handlers.echo, concurrency=concurrency) as srv:  # type: ignore[arg-type]
        with held_close(srv.port) as held:
            with connect(srv.address) as client:
                client.sendall(b"x")
                assert recv_exactly(client, 1) == b"x"
            assert held.closing.wait(10)
            threading.Timer(0.2, held.proceed.set).start()
            (record,) = srv.wait_for_connections(1, closed=True)
            assert held.closed.is_set(), "returned while the server's socket was still open"
            assert record.how_closed == "peer-eof"


def test_wait_for_connections_times_out_with_a_message() -> None:
    with ThreadedServer(handlers.echo) as srv:
        with pytest.raises(TimeoutError, match=r"waited 0\.05s for 2 connection"):
            srv.wait_for_connections(2, timeout=0.05)


def test_pool_serves_at_most_max_workers_at_once() -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold(conn: ServerConnection) -> None:
        started.release()
        release.wait(30)
        conn.sendall(b"done")

    srv = ThreadedServer(hold, concurrency="pool", max_workers=2).start()
    clients = [connect(srv.address) for _ in range(3)]
    try:
        srv.wait_for_connections(3)
        assert started.acquire(timeout=10) and started.acquire(timeout=10)
        # The third was accepted but waits for a worker.
        assert not started.acquire(timeout=0.2)
        assert sum(r.thread_name is None for r in srv.connections) == 1
        release.set()
        for client in clients:
            assert recv_exactly(client, 4) == b"done"
        srv.wait_for_connections(3, closed=True)
        assert len({r.thread_name for r in srv.connections}) <= 2
    finally:
        release.set()
        for client in clients:
            client.close()
        srv.stop()


def test_pool_stop_serves_then_closes_queued_connections() -> None:
    release = threading.Event()
    served: list[int] = []

    def hold(conn: ServerConnection) -> None:
        release.wait(30)
        served.append(conn.record.index)

    srv = ThreadedServer(hold, concurrency="pool", max_workers=1).start()
    clients = [connect(srv.address) for _ in range(3)]
    try:
        srv.wait_for_connections(3)
        release.set()
        srv.stop(timeout=10)
        assert sorted(served) == [0, 1, 2]  # the queued ones ran too, not cancelled
        assert all(r.how_closed in ("server-stop", "handler") for r in srv.connections)
    finally:
        for client in clients:
            client.close()


# -- load ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concurrency", "clients"), [("thread", 200), ("pool", 64), ("selector", 1000)]
)
def test_many_concurrent_clients(concurrency: str, clients: int) -> None:
    workers = 64 if concurrency == "pool" else None
    with ThreadedServer(
        handlers.echo, concurrency=concurrency, max_workers=workers  # type: ignore[arg-type]
    ) as srv:
        socks = [connect(srv.address, timeout=30) for _ in range(clients)]
        try:
            # All connected at once, each talks, all get their own bytes back.
            for i, s in enumerate(socks):
                s.sendall(b"%06d" % i)
            for i, s in enumerate(socks):
                assert recv_exactly(s, 6) == b"%06d" % i
            assert len(srv.connections) == clients
        finally:
            for s in socks:
                s.close()
        srv.wait_for_connections(clients, closed=True, timeout=60)
    assert srv.errors == []


@pytest.mark.parametrize("concurrency", MODELS)
def test_multi_megabyte_full_duplex(concurrency: str) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    with ThreadedServer(handlers.echo, concurrency=concurrency) as srv:  # type: ignore[arg-type]
        with connect(srv.address, timeout=60) as client:
            # Send and receive at once: a client that sends everything first would deadlock
            # against an echo server once both socket buffers are full.
            with ThreadPoolExecutor(1) as pool:
                sender = pool.submit(client.sendall, payload)
                received = recv_exactly(client, len(payload))
                sender.result(timeout=60)
            # After the stream the server's reads go back to small sizes; small messages
            # and one just over the small read size still come back whole.
            small = [b"a", b"bc" * 10, os.urandom(128 * 1024 + 1), b"end"]
            for message in small:
                client.sendall(message)
                assert recv_exactly(client, len(message)) == message
        (record,) = srv.wait_for_connections(1, closed=True)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    total = len(payload) + sum(map(len, small))
    assert record.bytes_in == record.bytes_out == total


@pytest.mark.parametrize("concurrency", MODELS)
def test_thousand_start_stop_cycles_leave_nothing_behind(concurrency: str) -> None:
    # Warm up (the reactor thread is started once per process and is not counted).
    with ThreadedServer(handlers.echo, concurrency=concurrency):  # type: ignore[arg-type]
        pass
    threads, fds = live_threads(), open_fds()
    for i in range(1000):
        with ThreadedServer(handlers.echo, concurrency=concurrency) as srv:  # type: ignore[arg-type]
            if i % 100 == 0:  # and now and then with a client still connected
                client = connect(srv.address)
                client.sendall(b"x")
                assert recv_exactly(client, 1) == b"x"
        if i % 100 == 0:
            assert client.recv(1) == b""
            client.close()
    for t in live_threads() - threads:
        t.join(10)
    assert live_threads() == threads
    assert open_fds() == fds


def test_a_handler_may_stop_its_own_server() -> None:
    def stop_from_inside(conn: ServerConnection) -> None:
        conn.sendall(b"bye")
        conn.server.stop(timeout=5)

    srv = ThreadedServer(stop_from_inside).start()
    with connect(srv.address) as client:
        assert recv_exactly(client, 3) == b"bye"
        assert client.recv(1) == b""
    srv.wait_for_connections(1, closed=True)
    assert not srv.running
    srv.stop()  # the second stop, from the test, is a no-op
    assert srv.errors == []


@pytest.mark.parametrize("concurrency", ["selector", "thread", "pool"])
def test_a_stopped_server_is_freed_without_the_garbage_collector(concurrency: str) -> None:
    # Nothing of a stopped server refers back to it (its listener did, until it stopped):
    # reference counting frees it, and a suite of fresh servers leaves no garbage cycles.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        srv = ThreadedServer(
            handlers.echo,
            concurrency=concurrency,  # type: ignore[arg-type]
        ).start()
        with socket.create_connection(srv.address, timeout=10) as client:
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
        (record,) = srv.wait_for_connections(1, closed=True)
        srv.stop()
        for thread in threading.enumerate():  # the worker may still be on its way out
            if thread.name == record.thread_name:
                thread.join(10)
                assert not thread.is_alive()
        ref = weakref.ref(srv)
        del srv
        assert ref() is None
    finally:
        if gc_was_enabled:
            gc.enable()
