"""One `selectors` loop per process that accepts for every server.

Starting a thread costs about 0.1 ms here, more than everything else a fresh server needs.
So servers do not own an accept thread: each registers its listening socket with this
process-wide loop, which accepts and hands connections on (to a worker thread, a pool, or a
native non-blocking handler that runs inside the loop itself).

Thread-safety: the loop waits in ``select()`` without holding :attr:`Reactor.lock` and holds
it while it dispatches a batch of events. Other threads register, modify and unregister under
the same lock. A batch may still name a socket that another thread unregistered (and whose
file descriptor may even have been reused) between ``select()`` returning and the lock being
taken, so every callback is an :class:`EventTarget` whose ``closed`` flag is checked first,
and every callback tolerates spurious readiness (``BlockingIOError``).
"""

from __future__ import annotations

import atexit
import os
import selectors
import socket
import threading
from typing import Protocol

from .._threads import mark_internal

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class EventTarget(Protocol):
    """What the reactor calls when a registered socket is ready."""

    closed: bool

    def on_event(self, mask: int) -> None: ...

    def on_reactor_error(self, exc: BaseException) -> None: ...


class Reactor:
    """A selector loop in one daemon thread, started on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._selector: selectors.BaseSelector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._stopping = False
        # One receive buffer for every native connection: the loop is single-threaded.
        self.buffer = bytearray(256 * 1024)
        self.view = memoryview(self.buffer)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _ensure_started(self) -> None:
        # Called with self.lock held.
        if self._stopping:
            raise RuntimeError("the netthreads reactor has been shut down")
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="netthreads-reactor", daemon=True)
            mark_internal(thread)
            thread.start()
            self._thread = thread

    def start(self) -> None:
        with self.lock:
            self._ensure_started()

    def register(self, sock: socket.socket, events: int, target: EventTarget) -> None:
        with self.lock:
            self._ensure_started()
            self._selector.register(sock, events, target)

    def register_locked(self, sock: socket.socket, events: int, target: EventTarget) -> None:
        """Register from inside a callback (the lock is already held by the loop)."""
        self._selector.register(sock, events, target)

    def modify_locked(self, sock: socket.socket, events: int, target: EventTarget) -> None:
        self._selector.modify(sock, events, target)

    def unregister_locked(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread. Registered sockets are left to their owners."""
        with self.lock:
            self._stopping = True
            thread = self._thread
        if thread is None:
            self._close()
            return
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        thread.join(timeout)
        if not thread.is_alive():
            self._close()

    def _close(self) -> None:
        try:
            self._selector.close()
        except Exception:
            pass
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        selector = self._selector
        lock = self.lock
        while True:
            try:
                events = selector.select()
            except (OSError, ValueError):
                if self._stopping:
                    return
                raise
            with lock:
                if self._stopping:
                    return
                for key, mask in events:
                    target = key.data
                    if target is None:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                        continue
                    if target.closed:
                        continue
                    try:
                        target.on_event(mask)
                    except BaseException as exc:  # handed to the owning server, never lost
                        target.on_reactor_error(exc)


_reactor: Reactor | None = None
_reactor_lock = threading.Lock()


def get_reactor() -> Reactor:
    """The process-wide reactor (created on first use, again after a fork)."""
    global _reactor
    reactor = _reactor
    if reactor is not None:
        return reactor
    with _reactor_lock:
        if _reactor is None:
            _reactor = Reactor()
        return _reactor


def shutdown_reactor(timeout: float = 5.0) -> None:
    """Stop the process-wide reactor if it runs; a later server starts a new one."""
    global _reactor
    with _reactor_lock:
        reactor, _reactor = _reactor, None
    if reactor is not None:
        reactor.shutdown(timeout)


def shutdown_reactor_if_idle(timeout: float = 5.0) -> bool:
    """Stop the process-wide reactor unless a socket is still registered with it.

    pytest's in-process ``pytester`` runs configure and unconfigure the plugin while the
    outer test's servers may still be registered; those keep the reactor.
    """
    global _reactor
    with _reactor_lock:
        reactor = _reactor
        if reactor is None:
            return True
        with reactor.lock:
            if len(reactor._selector.get_map()) > 1:  # the wake-up socket is always there
                return False
        _reactor = None
    reactor.shutdown(timeout)
    return True


def _after_fork_in_child() -> None:
    global _reactor
    # The loop thread does not exist in the child; its sockets belong to the parent.
    _reactor = None


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown_reactor, 1.0)
