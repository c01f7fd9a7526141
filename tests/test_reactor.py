"""The shared event loop: one server's or proxy's failure stays its own.

Every server and proxy of the process accepts and forwards on one loop thread, so anything
that could stop that thread would stop them all: the tests below break one owner in each
way we know and check that the others go on, and that the failure reaches its owner.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads._runtime import reactor as reactor_module
from pytest_netthreads._runtime.reactor import MAX_WAIT, Reactor, ReactorDied, get_reactor
from pytest_netthreads.faults import FaultProxy, Latency
from pytest_netthreads.servers import HandlerError, NativeConnection, native
from tests._util import recv_exactly


def _echoes(address: object) -> bool:
    with socket.create_connection(address, timeout=10) as client:  # type: ignore[arg-type]
        client.sendall(b"still here")
        return recv_exactly(client, 10) == b"still here"


def test_a_timer_a_year_away_does_not_stop_the_loop() -> None:
    reactor = get_reactor()
    reactor.start()
    fired: list[str] = []
    errors: list[BaseException] = []
    # epoll_wait() overflows past ~24.8 days; such a wait used to kill the loop thread.
    with reactor.lock:
        far = reactor.call_at_locked(time.monotonic() + 3.2e7, lambda: fired.append("far"),
                                     errors.append)
        never = reactor.call_at_locked(math.inf, lambda: fired.append("never"), errors.append)
    try:
        with ThreadedServer(handlers.echo) as srv:
            assert _echoes(srv.address)
        assert reactor.thread is not None and reactor.thread.is_alive()
        assert reactor._poll_timeout() == MAX_WAIT  # clamped, not 3.2e7
    finally:
        with reactor.lock:
            far.cancel()
            never.cancel()
    assert fired == [] and errors == []


def test_a_nan_deadline_is_refused() -> None:
    reactor = get_reactor()
    with reactor.lock, pytest.raises(ValueError, match="deadline cannot be NaN"):
        reactor.call_at_locked(math.nan, lambda: None, lambda exc: None)


def test_the_longest_latency_through_a_proxy_keeps_other_servers_serving() -> None:
    with ThreadedServer(handlers.echo) as slow_target, ThreadedServer(handlers.echo) as other:
        with FaultProxy(slow_target, Latency(3600)) as proxy:
            client = socket.create_connection(proxy.address, timeout=10)
            client.sendall(b"held for an hour")
            proxy.wait_for_connections(1)
            assert _echoes(other.address)  # the loop is not stuck behind the hour-long timer
            client.close()


class _Failing(NativeConnection):
    """A native handler whose callback raises, and whose error handler raises too."""

    calls = 0

    def on_event(self, mask: int) -> None:
        type(self).calls += 1
        raise RuntimeError("callback failed")

    def on_reactor_error(self, exc: BaseException) -> None:
        self.sock.close()
        raise KeyError("and so did its error handler")


@native(_Failing)
def _failing(conn: object) -> None:  # pragma: no cover - only the native path is used
    raise AssertionError


def test_a_raising_error_handler_goes_to_unraisablehook_and_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", seen.append)
    _Failing.calls = 0
    with ThreadedServer(_failing, concurrency="selector") as bad, ThreadedServer(
        handlers.echo, concurrency="selector"
    ) as good:
        with socket.create_connection(bad.address, timeout=10) as client:
            client.sendall(b"x")
            bad.wait_for_connections(1)
            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:
                time.sleep(0.01)
        assert _echoes(good.address)
    assert len(seen) == 1
    args: SimpleNamespace = seen[0]  # type: ignore[assignment]
    assert isinstance(args.exc_value, KeyError)
    assert "callback failed" in args.err_msg
    # The failing socket was unregistered before its error handler ran: called once, not in
    # a loop for as long as the socket stays readable.
    assert _Failing.calls == 1


def test_a_connection_that_cannot_be_handed_on_fails_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = ThreadedServer(handlers.echo).start()
    original = ThreadedServer._hand_on
    failures = []

    def hand_on_once_failing(self: ThreadedServer, sock: socket.socket, record: object) -> None:
        if self is srv and not failures:
            failures.append(record)
            raise MemoryError("no memory for this one")
        original(self, sock, record)  # type: ignore[arg-type]

    monkeypatch.setattr(ThreadedServer, "_hand_on", hand_on_once_failing)
    first = socket.create_connection(srv.address, timeout=10)
    assert first.recv(1) == b""  # that connection was closed
    first.close()
    assert _echoes(srv.address)  # the server goes on serving
    with pytest.raises(HandlerError, match="MemoryError in connection #0") as info:
        srv.stop()
    assert srv.connections[0].how_closed == "error"
    assert len(info.value.exceptions) == 1


def test_a_failing_listener_callback_is_recorded_and_accepting_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = ThreadedServer(handlers.echo).start()
    original = ThreadedServer._accept_ready
    calls = []

    def accept_once_failing(self: ThreadedServer, draining: bool = False) -> None:
        if self is srv and not calls:
            calls.append(1)
            raise RuntimeError("accepting failed once")
        original(self, draining)

    monkeypatch.setattr(ThreadedServer, "_accept_ready", accept_once_failing)
    # The client that woke the failing callback is served once the listener is back.
    assert _echoes(srv.address)
    with pytest.raises(HandlerError, match="RuntimeError while accepting"):
        srv.stop()


class _ExplodingPoller:
    """Wraps a poller; its ``poll()`` raises once ``armed`` is set (a bug in the loop)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.armed = threading.Event()

    def poll(self, *args: object) -> object:
        if self.armed.is_set():
            raise RuntimeError("injected loop failure")
        return self._inner.poll(*args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


@pytest.fixture
def doomed_reactor() -> Iterator[tuple[Reactor, _ExplodingPoller]]:
    """A fresh process-wide loop that can be made to die; the previous one comes back."""
    previous = reactor_module._reactor
    reactor = Reactor()
    poller = _ExplodingPoller(reactor._poller)
    reactor._poller = poller  # type: ignore[assignment]
    reactor_module._reactor = reactor
    try:
        yield reactor, poller
    finally:
        replacement = reactor_module._reactor
        reactor_module._reactor = previous
        reactor_module._unreported_death = None
        if replacement is not None and replacement is not previous:
            replacement.shutdown(5.0)


def test_a_dead_loop_fails_its_servers_the_next_start_and_a_new_loop_serves(
    doomed_reactor: tuple[Reactor, _ExplodingPoller],
) -> None:
    reactor, poller = doomed_reactor
    victim = ThreadedServer(handlers.echo).start()
    proxy = FaultProxy(("127.0.0.1", victim.port)).start()
    poller.armed.set()
    reactor.wake()
    assert reactor.thread is not None
    reactor.thread.join(10)
    assert not reactor.thread.is_alive()
    assert isinstance(reactor.death, ReactorDied)
    # The servers and proxies registered with it fail loudly, with the cause.
    with pytest.raises(HandlerError, match=r"(?s)event loop thread died.*injected loop failure"):
        victim.stop()
    with pytest.raises(Exception, match=r"(?s)event loop thread died.*injected loop failure"):
        proxy.stop()
    # The next start is told once; later ones get a new loop that works.
    with pytest.raises(ReactorDied, match="injected loop failure"):
        ThreadedServer(handlers.echo).start()
    with ThreadedServer(handlers.echo) as fresh:
        assert _echoes(fresh.address)
    assert get_reactor() is not reactor


def test_without_epoll_a_socket_registered_while_the_loop_waits_is_watched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # poll() watches only the descriptors it was called with: the loop, already waiting,
    # must be woken for a registration to count (epoll sees it without a wake-up).
    monkeypatch.delattr(reactor_module.select, "epoll")
    reactor = Reactor()
    ready = threading.Event()
    target = SimpleNamespace(
        closed=False, on_event=lambda mask: ready.set(), on_reactor_error=lambda exc: None
    )
    listener = socket.socket()
    client: socket.socket | None = None
    try:
        reactor.start()  # the loop waits in poll() with only its wake-up socket
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        reactor.register(listener, reactor_module.EVENT_READ, target)
        client = socket.create_connection(listener.getsockname(), timeout=10)
        assert ready.wait(10), "the loop never saw the socket registered while it waited"
    finally:
        with reactor.lock:
            reactor.unregister_locked(listener)
        reactor.shutdown()
        listener.close()
        if client is not None:
            client.close()
