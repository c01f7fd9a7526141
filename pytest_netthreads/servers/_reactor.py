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

Timers (:meth:`Reactor.call_at_locked`) run in the same thread under the same lock, so a
:class:`~pytest_netthreads.faults.FaultProxy` (which needs them for latency and pacing) can
share the loop with the servers it sits in front of: a round trip through a proxy to an
in-process server then wakes no other thread (see ``docs/faults.rst``).
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .._threads import mark_internal

EVENT_READ = 1
EVENT_WRITE = 2

# epoll on Linux, poll elsewhere: the two share their API and their flag values. The
# `selectors` module would do too, at a few microseconds more per event (it builds a key
# object per ready socket), which is a fifth of a loopback round trip.
_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_READY_READ = select.POLLIN | select.POLLHUP | select.POLLERR
_READY_WRITE = select.POLLOUT | select.POLLHUP | select.POLLERR


def _interest(events: int) -> int:
    return (_POLLIN if events & EVENT_READ else 0) | (_POLLOUT if events & EVENT_WRITE else 0)


class EventTarget(Protocol):
    """What the reactor calls when a registered socket is ready."""

    closed: bool

    def on_event(self, mask: int) -> None: ...

    def on_reactor_error(self, exc: BaseException) -> None: ...


class Timer:
    """A call :meth:`Reactor.call_at_locked` scheduled; :meth:`cancel` it (lock held)."""

    __slots__ = ("fn", "on_error", "when")

    def __init__(
        self, when: float, fn: Callable[[], None], on_error: Callable[[BaseException], None]
    ) -> None:
        self.when = when
        self.fn: Callable[[], None] | None = fn
        self.on_error = on_error

    @property
    def cancelled(self) -> bool:
        return self.fn is None

    def cancel(self) -> None:
        # Drop the references now; the heap entry itself goes when it comes due.
        self.fn = None


class Reactor:
    """A selector loop in one daemon thread, started on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._poller: select.epoll | select.poll = (
            select.epoll() if hasattr(select, "epoll") else select.poll()
        )
        self._targets: dict[int, EventTarget | None] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller.register(self._wake_r.fileno(), _POLLIN)
        self._targets[self._wake_r.fileno()] = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = itertools.count()
        # Owners that keep the loop although they may have no socket registered for a while
        # (a fault proxy that is down): shutdown_reactor_if_idle() leaves the loop to them.
        self.holds = 0
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

    def in_loop_thread(self) -> bool:
        """Whether the caller is the loop thread (which holds the lock in every callback)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def call_at_locked(
        self,
        when: float,
        fn: Callable[[], None],
        on_error: Callable[[BaseException], None],
    ) -> Timer:
        """Call ``fn()`` in the loop thread, lock held, once ``time.monotonic() >= when``.

        An exception from ``fn`` is handed to ``on_error`` (in the loop thread).
        """
        self._ensure_started()
        timer = Timer(when, fn, on_error)
        heapq.heappush(self._timers, (when, next(self._timer_seq), timer))
        if not self.in_loop_thread():
            # The loop computed its poll timeout before this timer existed.
            self.wake()
        return timer

    def wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    @property
    def registered(self) -> int:
        """How many sockets are registered (the internal wake-up socket not counted)."""
        return len(self._targets) - 1

    def register(self, sock: socket.socket, events: int, target: EventTarget) -> None:
        with self.lock:
            self._ensure_started()
            self.register_locked(sock, events, target)

    def register_locked(self, sock: socket.socket, events: int, target: EventTarget) -> None:
        """Register with the lock already held (from inside a callback, for instance)."""
        fd = sock.fileno()
        self._poller.register(fd, _interest(events))
        self._targets[fd] = target

    def modify_locked(self, sock: socket.socket, events: int, target: EventTarget) -> None:
        fd = sock.fileno()
        self._poller.modify(fd, _interest(events))
        self._targets[fd] = target

    def unregister_locked(self, sock: socket.socket) -> None:
        """Forget ``sock``; call it before closing the socket (its descriptor is needed)."""
        fd = sock.fileno()
        if fd < 0 or fd not in self._targets:
            return
        del self._targets[fd]
        try:
            self._poller.unregister(fd)
        except (OSError, KeyError, ValueError):
            pass

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread. Registered sockets are left to their owners."""
        with self.lock:
            self._stopping = True
            thread = self._thread
        if thread is None:
            self._close()
            return
        self.wake()
        thread.join(timeout)
        if not thread.is_alive():
            self._close()

    def _close(self) -> None:
        close = getattr(self._poller, "close", None)
        if close is not None:
            close()
        self._wake_r.close()
        self._wake_w.close()

    def _poll_timeout(self) -> float | None:
        """Seconds until the first timer is due (lock held); ``None``: no timer."""
        timers = self._timers
        while timers and timers[0][2].fn is None:
            heapq.heappop(timers)
        if not timers:
            return None
        return max(0.0, timers[0][0] - time.monotonic())

    def _run_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            fn, timer.fn = timer.fn, None
            if fn is None:
                continue
            try:
                fn()
            except BaseException as exc:  # handed to the timer's owner, never lost
                timer.on_error(exc)

    def _run(self) -> None:
        poller = self._poller
        targets = self._targets
        lock = self.lock
        # epoll.poll() takes seconds, poll.poll() milliseconds; both block on None.
        in_ms = not hasattr(select, "epoll") or not isinstance(poller, select.epoll)
        timeout: float | None = None
        while True:
            try:
                if timeout is None:
                    events = poller.poll()
                elif in_ms:
                    events = poller.poll(math.ceil(timeout * 1000))
                else:
                    events = poller.poll(timeout)
            except (OSError, ValueError):
                if self._stopping:
                    return
                raise
            with lock:
                if self._stopping:
                    return
                for fd, mask in events:
                    target = targets.get(fd)
                    if target is None:
                        if fd == self._wake_r.fileno():
                            try:
                                self._wake_r.recv(4096)
                            except OSError:
                                pass
                        continue
                    if target.closed:
                        continue
                    ready = (EVENT_READ if mask & _READY_READ else 0) | (
                        EVENT_WRITE if mask & _READY_WRITE else 0
                    )
                    try:
                        target.on_event(ready)
                    except BaseException as exc:  # handed to the owning server, never lost
                        target.on_reactor_error(exc)
                if self._timers:
                    self._run_timers()
                    timeout = self._poll_timeout()
                else:
                    timeout = None


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
            if reactor.registered or reactor.holds:
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
