"""stop() never loses a connection or a handler error.

A connection the server accepted (or that waits in the listen backlog: the client's connect()
returned) gets its handler run on what the client sent, even when stop() comes before the
handler started; one that cannot be served in time is reported. Each test repeats the race
many times: once was not enough to see the old behaviour (green in 13 of 15 runs).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads._runtime.reactor import get_reactor
from pytest_netthreads.servers import HandlerError, ServerConnection, ServerStopTimeout

ROUNDS = 25


class _Parses:
    """Reads one line and raises on anything but b"ok" (a handler with a bug to find)."""

    def __init__(self) -> None:
        self.ran = 0
        self.lock = threading.Lock()

    def __call__(self, conn: ServerConnection) -> None:
        with self.lock:
            self.ran += 1
        line = conn.makefile("rb").readline()
        if line.strip() != b"ok":
            raise ValueError(f"bad request {line!r}")


@pytest.mark.parametrize("concurrency", ["thread", "pool"])
def test_a_handler_error_right_after_the_client_is_done_is_raised_by_stop(
    concurrency: str,
) -> None:
    for _ in range(ROUNDS):
        handler = _Parses()
        srv = ThreadedServer(handler, concurrency=concurrency).start()  # type: ignore[arg-type]
        with socket.create_connection(srv.address, timeout=10) as client:
            client.sendall(b"bogus\n")
        with pytest.raises(HandlerError, match="ValueError: bad request b'bogus\\\\n'"):
            srv.stop()
        assert handler.ran == 1
        assert [r.how_closed for r in srv.connections] == ["error"]


@pytest.mark.parametrize("concurrency", ["thread", "pool"])
def test_a_connection_seen_accepted_gets_its_handler_run(concurrency: str) -> None:
    for _ in range(ROUNDS):
        handler = _Parses()
        srv = ThreadedServer(handler, concurrency=concurrency).start()  # type: ignore[arg-type]
        client = socket.create_connection(srv.address, timeout=10)
        client.sendall(b"ok\n")
        srv.wait_for_connections(1)
        srv.stop()  # the handler may not have started yet: it runs all the same
        client.close()
        assert handler.ran == 1
        assert srv.connections[0].how_closed in ("handler", "server-stop")
        assert srv.connections[0].bytes_in == 3  # it read what the client sent


@pytest.mark.parametrize("concurrency", ["thread", "pool", "selector"])
def test_connections_in_the_listen_backlog_are_served_not_reset(concurrency: str) -> None:
    """The clients connect while the loop cannot accept; stop() races the loop for them."""
    received: list[bytes] = []
    lock = threading.Lock()

    def handler(conn: ServerConnection) -> None:
        data = conn.recv(100)
        with lock:
            received.append(data)

    target: Callable[..., object] = handlers.sink if concurrency == "selector" else handler
    for _ in range(5):
        received.clear()
        srv = ThreadedServer(target, concurrency=concurrency).start()  # type: ignore[arg-type]
        reactor = get_reactor()
        clients = []
        with reactor.lock:  # the loop cannot accept: the connections wait in the backlog
            for i in range(4):
                client = socket.create_connection(srv.address, timeout=10)
                client.sendall(b"hello %d" % i)
                clients.append(client)
            stopper = threading.Thread(target=srv.stop)
            stopper.start()
        stopper.join(30)
        assert not stopper.is_alive()
        records = srv.connections
        assert len(records) == 4  # none was reset unseen by the close of the listener
        if concurrency == "selector":
            assert all(r.how_closed == "server-stop" for r in records)
        else:
            assert sorted(received) == [b"hello %d" % i for i in range(4)]
            assert all(r.bytes_in == 7 for r in records)
        for client in clients:
            client.close()


def test_queued_pool_connections_run_after_the_running_ones() -> None:
    ran: list[int] = []
    started = threading.Event()

    def handler(conn: ServerConnection) -> None:
        started.set()
        conn.recv(1)  # returns b"" once stop() shuts the socket down
        ran.append(conn.record.index)

    srv = ThreadedServer(handler, concurrency="pool", max_workers=1).start()
    clients = [socket.create_connection(srv.address, timeout=10) for _ in range(4)]
    assert started.wait(10)
    srv.wait_for_connections(4)
    srv.stop()  # used to cancel the three queued ones: their handlers never ran
    assert sorted(ran) == [0, 1, 2, 3]
    for client in clients:
        client.close()


def test_a_connection_that_never_got_a_worker_is_reported_unserved() -> None:
    release = threading.Event()

    def ignores_stop(conn: ServerConnection) -> None:
        release.wait(30)

    srv = ThreadedServer(ignores_stop, concurrency="pool", max_workers=1).start()
    clients = [socket.create_connection(srv.address, timeout=10) for _ in range(2)]
    srv.wait_for_connections(2)
    try:
        with pytest.raises(ServerStopTimeout) as info:
            srv.stop(timeout=0.2)
    finally:
        release.set()
    error = info.value
    assert [r.index for r in error.unserved] == [1]
    assert "1 accepted connection(s) dropped unserved" in str(error)
    assert "#1 from 127.0.0.1:" in str(error)
    assert [r.how_closed for r in srv.connections][1] == "unserved"
    assert len(error.threads) == 1
    error.threads[0].join(10)
    for client in clients:
        client.close()


def test_a_handler_oserror_of_its_own_is_not_mistaken_for_the_stop() -> None:
    def handler(conn: ServerConnection) -> None:
        conn.recv(10)
        open("/nonexistent/netthreads/file")  # noqa: SIM115 - the handler's own bug

    srv = ThreadedServer(handler).start()
    with socket.create_connection(srv.address, timeout=10) as client:
        client.sendall(b"x")
    with pytest.raises(HandlerError, match="FileNotFoundError"):
        srv.stop()


def test_concurrent_stops_all_wait_for_the_workers_and_raise_the_same_error() -> None:
    gate = threading.Event()
    workers: list[threading.Thread] = []

    def handler(conn: ServerConnection) -> None:
        workers.append(threading.current_thread())
        conn.stopping.wait(30)
        gate.wait(30)
        raise RuntimeError("raised while stopping")

    srv = ThreadedServer(handler).start()
    client = socket.create_connection(srv.address, timeout=10)
    srv.wait_for_connections(1)
    outcomes: list[tuple[bool, BaseException | None]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def stop() -> None:
        barrier.wait(10)
        error: BaseException | None = None
        try:
            srv.stop()
        except BaseException as exc:
            error = exc
        with lock:
            outcomes.append((workers[0].is_alive(), error))

    stoppers = [threading.Thread(target=stop) for _ in range(16)]
    for thread in stoppers:
        thread.start()
    # Give early returns a chance to show (they used to come at once), then let it finish.
    deadline = time.monotonic() + 2
    while len(outcomes) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for thread in stoppers:
        thread.join(30)
    client.close()
    assert len(outcomes) == 16
    assert [alive for alive, _ in outcomes] == [False] * 16
    errors = {id(error) for _, error in outcomes}
    assert len(errors) == 1  # every caller raised the one HandlerError
    assert isinstance(outcomes[0][1], HandlerError)
    srv.stop()  # a later call does nothing


def test_stop_from_a_handler_while_another_thread_stops_returns() -> None:
    stopped_inside = threading.Event()

    def handler(conn: ServerConnection) -> None:
        conn.stopping.wait(30)
        conn.server.stop()  # must not wait for the stop that is joining this very thread
        stopped_inside.set()

    srv = ThreadedServer(handler).start()
    with socket.create_connection(srv.address, timeout=10):
        srv.wait_for_connections(1)
        srv.stop()
    assert stopped_inside.is_set()
