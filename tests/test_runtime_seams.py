"""Seams instead of patching the kit: creation listeners, lock listeners, locks' public surface.

The thread-leak checker hears about servers through ``_runtime.threads.note_created`` (it
used to patch ``ThreadedServer.__init__``); the deadlock and lock-order detectors register
listeners with ``locks`` (they used to swap single module-level callbacks) and use its public
names only.
"""

from __future__ import annotations

import _thread
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads._runtime.listeners import Listeners
from pytest_netthreads._runtime.threads import add_creation_listener, note_created
from pytest_netthreads.detect import locks
from pytest_netthreads.detect.lockorder import LockOrderChecker
from pytest_netthreads.detect.threadleak import ThreadLeakChecker


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def tracking() -> Iterator[None]:
    with locks.tracking():
        yield


def test_listeners_newest_first_each_registration_removed_once() -> None:
    listeners: Listeners[Callable[[], None]] = Listeners()
    assert listeners.current == ()

    def a() -> None: ...

    def b() -> None: ...

    remove_a = listeners.add(a)
    remove_b = listeners.add(b)
    remove_a_again = listeners.add(a)
    assert listeners.current == (a, b, a)
    remove_a()
    remove_a()  # a second call does nothing (the other registration of a stays)
    assert listeners.current == (a, b)
    remove_a_again()
    remove_b()
    assert listeners.current == ()
    with pytest.raises(TypeError, match="listener must be callable, got 42"):
        listeners.add(42)  # type: ignore[arg-type]


def test_a_server_announces_itself_in_the_thread_that_creates_it() -> None:
    seen: list[tuple[object, str, str]] = []

    def listener(obj: object) -> None:
        assert isinstance(obj, ThreadedServer)
        seen.append((obj, threading.current_thread().name, obj.concurrency))

    remove = add_creation_listener(listener)
    try:
        server = ThreadedServer(handlers.echo, concurrency="pool")
        with pytest.raises(ValueError, match="port"):
            ThreadedServer(handlers.echo, port=-1)  # a failed __init__ announces nothing
        creator = threading.Thread(target=ThreadedServer, args=(handlers.echo,), name="maker")
        creator.start()
        creator.join(30)
    finally:
        remove()
    # Announced at the end of __init__: the object is complete.
    assert seen[0] == (server, threading.current_thread().name, "pool")
    assert [name for _, name, _ in seen] == [threading.current_thread().name, "maker"]
    ThreadedServer(handlers.echo)
    note_created(object())  # nobody listens any more
    assert len(seen) == 2
    with pytest.raises(TypeError, match="listener must be callable"):
        add_creation_listener("not a function")  # type: ignore[arg-type]


def test_a_servers_threads_belong_to_whoever_created_the_server() -> None:
    """The connection thread is started by the reactor (a kit thread): only the server's
    announcement ties it to the fixture that created the server, not to the test using it."""
    checker = ThreadLeakChecker(grace=0).start()
    try:
        with checker.owned_by("fixture"):
            server = ThreadedServer(handlers.echo, name="owned").start()
        try:
            with checker.owned_by("test"), socket.create_connection(
                server.address, timeout=30
            ) as client:
                client.sendall(b"x")
                assert client.recv(1) == b"x"
                assert checker.check("test") == []
                leaks = checker.check("fixture")
                assert [leak.name for leak in leaks] == ["netthreads[owned]#0"]
                assert leaks[0].owner == "fixture"
        finally:
            server.stop()
    finally:
        checker.stop()


def test_locks_public_surface_for_the_detectors(tracking: None) -> None:
    assert type(locks.raw_lock()) is _thread.LockType  # while threading.Lock is tracked
    lock = threading.Lock()
    lock.acquire()
    blocked: list[int] = []
    remove = locks.add_block_listener(blocked.append)
    raised: list[BaseException] = []

    def waiter() -> None:
        try:
            lock.acquire()
        except KeyError as exc:
            raised.append(exc)

    thread = threading.Thread(target=waiter, name="waiter")
    try:
        thread.start()
        wait_until(lambda: thread.ident is not None and locks.is_waiting(thread.ident))
        ident = thread.ident or 0
        assert blocked == [ident]  # called in the waiting thread, before it blocked
        assert not locks.abort_pending(ident)
        locks.request_abort(ident, KeyError("stop"))
        thread.join(30)
        assert [type(exc) for exc in raised] == [KeyError]
        assert not locks.abort_pending(ident) and not locks.is_waiting(ident)
    finally:
        remove()
        lock.release()
        thread.join(30)
    with pytest.raises(TypeError, match="listener must be callable"):
        locks.add_edge_listener(None)  # type: ignore[arg-type]


def test_a_nested_lock_order_checker_gets_the_edges_of_its_block() -> None:
    def invert(a: threading.Lock, b: threading.Lock) -> None:
        with a, b:
            pass
        with b, a:
            pass

    with LockOrderChecker() as outer:
        with LockOrderChecker() as inner:
            one = threading.Lock()  # two lines: two lock classes
            two = threading.Lock()
            invert(one, two)
        assert len(inner.take_reports()) == 1
        assert outer.take_reports() == []
        three = threading.Lock()
        four = threading.Lock()
        invert(three, four)  # the inner one is gone: the outer one sees this
        assert len(outer.take_reports()) == 1
    assert locks._edge_listeners.current == ()
