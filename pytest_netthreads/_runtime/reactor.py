"""One `selectors` loop per process that accepts for every server.

Starting a thread costs more than everything else a fresh server needs
(``bench/bench_servers.py``). So servers do not own an accept thread: each registers its
listening socket with this process-wide loop, which accepts and hands connections on (to a
worker thread, a pool, or a native non-blocking handler that runs inside the loop itself).

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

One loop serves every server of the process, so one owner's failure must stay its own:

- an exception from a callback or a timer goes to its owner (``on_reactor_error`` /
  the timer's ``on_error``), and the failing socket is unregistered first, so an owner that
  fails on every event cannot turn the loop into a busy loop of errors; an exception from
  the error handler itself goes to :func:`sys.unraisablehook`;
- a timer may be due in a year: the loop never waits longer than :data:`MAX_WAIT` at once
  (``epoll_wait`` takes at most 2**31-1 ms and raises ``OverflowError`` beyond);
- if the loop thread dies all the same (a bug of the loop itself), every owner registered
  with it is told (its ``stop()`` raises the cause), the next :func:`acquire_reactor` raises
  :class:`ReactorDied` once, and later servers get a fresh loop.
"""

from __future__ import annotations

import atexit
import errno
import heapq
import itertools
import math
import os
import select
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Protocol

from .threads import mark_internal

EVENT_READ = 1
EVENT_WRITE = 2

# epoll on Linux, poll elsewhere: the two share their API and their flag values. The
# `selectors` module would do too, at a few microseconds more per event (it builds a key
# object per ready socket), which is a fifth of a loopback round trip.
_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_READY_READ = select.POLLIN | select.POLLHUP | select.POLLERR
_READY_WRITE = select.POLLOUT | select.POLLHUP | select.POLLERR


MAX_WAIT = 3600.0
"""The longest single wait of the loop, in seconds: a timer due later is simply looked at
again after it (``epoll_wait`` and ``poll`` overflow at about 24.8 days)."""


class ReactorDied(RuntimeError):
    """The process-wide event loop thread died; the message holds its traceback.

    Raised once, by the next server or proxy that starts after the loop died (later ones get
    a fresh loop), and recorded as an error by every server and proxy that was registered
    with the dead loop (their ``stop()`` raises it).
    """


def _unraisable(exc: BaseException, message: str, obj: object) -> None:
    """Hand an error that has no owner left to :func:`sys.unraisablehook` (pytest shows it)."""
    hook = sys.unraisablehook
    if hook is sys.__unraisablehook__:  # the C default accepts only its own argument type
        print(f"netthreads: {message}", file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return
    args = types.SimpleNamespace(
        exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
        err_msg=f"netthreads: {message}", object=obj,
    )
    try:
        hook(args)
    except BaseException:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def _interest(events: int) -> int:
    return (_POLLIN if events & EVENT_READ else 0) | (_POLLOUT if events & EVENT_WRITE else 0)


# _interest() of each combination of EVENT_READ and EVENT_WRITE, looked up on hot paths.
_INTEREST = tuple(_interest(events) for events in range(4))


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
        # Whether a registration must wake the loop for its wait to include the new socket.
        self._wake_to_register = not (
            hasattr(select, "epoll") and isinstance(self._poller, select.epoll)
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
        self.death: ReactorDied | None = None  # set if the loop thread died
        # One receive buffer for every native connection: the loop is single-threaded.
        self.buffer = bytearray(256 * 1024)
        self.view = memoryview(self.buffer)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _ensure_started(self) -> None:
        # Called with self.lock held.
        if self.death is not None:
            raise ReactorDied(str(self.death))
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

        An exception from ``fn`` is handed to ``on_error`` (in the loop thread). ``when`` may
        be far away (even ``inf``: never); ``NaN`` raises ``ValueError``.
        """
        if when != when:
            raise ValueError("a timer's deadline cannot be NaN")
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
        """Register ``sock``, starting the loop if needed (see :meth:`register_locked`)."""
        with self.lock:
            if self._thread is None or self.death is not None or self._stopping:
                self._ensure_started()
            self.register_locked(sock, events, target)

    def register_locked(self, sock: socket.socket, events: int, target: EventTarget) -> None:
        """Register with the lock already held (from inside a callback, for instance).

        An epoll wait in progress sees the new socket: the loop is not woken. ``poll()``
        watches only the descriptors it was called with, so there the loop is woken (unless
        this is the loop thread, which polls again after its callbacks).
        """
        fd = sock.fileno()
        self._poller.register(fd, _INTEREST[events & 3])
        self._targets[fd] = target
        if self._wake_to_register and not self.in_loop_thread():
            self.wake()

    def modify_locked(self, sock: socket.socket, events: int, target: EventTarget) -> None:
        fd = sock.fileno()
        self._poller.modify(fd, _INTEREST[events & 3])
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
        return min(MAX_WAIT, max(0.0, timers[0][0] - time.monotonic()))

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
                try:
                    timer.on_error(exc)
                except BaseException as inner:
                    _unraisable(inner, f"the error handler of a timer raised (for {exc!r})", fn)

    def _contain(self, fd: int, target: EventTarget, exc: BaseException) -> None:
        """A callback of ``target`` raised ``exc`` (lock held): hand it to its owner.

        The socket is unregistered first: an owner whose callback fails on every event would
        otherwise be called again at once, for ever. Its error handler closes the socket or
        registers it again (a listener backing off, say).
        """
        if self._targets.get(fd) is target:
            del self._targets[fd]
            try:
                self._poller.unregister(fd)
            except (OSError, KeyError, ValueError):
                pass
        try:
            target.on_reactor_error(exc)
        except BaseException as inner:
            _unraisable(inner, f"the error handler of {target!r} raised (for {exc!r})", target)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self._die(exc)

    def _die(self, exc: BaseException) -> None:
        """The loop itself failed: tell every owner, let the next start fail, close up."""
        global _unreported_death
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        death = ReactorDied(
            "the netthreads event loop thread died; servers and proxies registered with it "
            "stopped accepting and forwarding (a new loop serves those started later). "
            f"Its traceback:\n{text}"
        )
        locked = self.lock.acquire(timeout=10.0)
        try:
            self.death = death
            targets = [t for t in self._targets.values() if t is not None]
            timers, self._timers = self._timers, []
            for target in targets:
                try:
                    target.on_reactor_error(death)
                except BaseException as inner:
                    _unraisable(inner, f"the error handler of {target!r} raised", target)
            for _, _, timer in timers:
                fn, timer.fn = timer.fn, None
                if fn is not None:
                    try:
                        timer.on_error(death)
                    except BaseException as inner:
                        _unraisable(inner, "the error handler of a timer raised", fn)
        finally:
            if locked:
                self.lock.release()
        with _reactor_lock:
            if _reactor is self:
                _unreported_death = death
        self._close()

    def _loop(self) -> None:
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
                        self._contain(fd, target, exc)
                # Not kept until the next event: a stopped server is freed when it stops.
                target = None
                if self._timers:
                    self._run_timers()
                    timeout = self._poll_timeout()
                else:
                    timeout = None


# accept() hands on a network error of the connection it took from the queue (Linux accept(2):
# "treat them like EAGAIN by retrying"); the connection is gone, the next one may be fine.
_RETRY_ACCEPT = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "EPERM",
    )
    if hasattr(errno, name)
)


RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""The process or the system ran out of descriptors or memory: wait, then try again."""


def readable_now(sock: socket.socket) -> bool:
    """Whether ``sock`` is readable this instant (for a listener: a connection is waiting).

    A one-shot ``poll``: cheaper than a failing non-blocking ``accept()`` (which raises) and,
    unlike ``select()``, good for any descriptor number.
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def is_retryable_accept_error(exc: OSError) -> bool:
    """Whether accept() failed for that one connection only (try the next at once)."""
    return exc.errno in _RETRY_ACCEPT


class AcceptBackoff:
    """A listener's pauses after accept() fails for want of resources (``EMFILE``...).

    The listening socket stays readable while connections wait, so trying again at once
    spins: the owner unregisters it and tries again after a pause that starts at
    :attr:`FIRST` seconds and doubles up to :attr:`MOST`, until accepting works again.
    The failures are counted; :meth:`take_report` makes one error of them.
    """

    FIRST = 0.005
    MOST = 0.25

    def __init__(self, owner: str, operation: str = "accept()") -> None:
        self.owner = owner
        self.operation = operation
        self.count = 0
        self._reported = 0
        self._first: OSError | None = None
        self._first_text = ""
        self._delay = 0.0
        self._timer: Timer | None = None

    def failed(self, exc: OSError) -> None:
        self.count += 1
        if self._first is None or self._reported == self.count - 1:
            self._first = exc
            self._first_text = "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)
            )

    def succeeded(self) -> None:
        self._delay = 0.0

    def schedule(
        self,
        reactor: Reactor,
        resume: Callable[[], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Call ``resume`` (lock held) after the next pause; the lock is held here too."""
        self.cancel()
        self._delay = min(self.MOST, max(self.FIRST, self._delay * 2))
        self._timer = reactor.call_at_locked(time.monotonic() + self._delay, resume, on_error)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def take_report(self) -> tuple[OSError, str] | None:
        """The failures since the last report as one ``(error, text)``, or ``None``."""
        new = self.count - self._reported
        if not new or self._first is None:
            return None
        self._reported = self.count
        first = self._first
        name = errno.errorcode.get(first.errno or 0, str(first.errno))
        message = (
            f"{self.owner}: {self.operation} failed {new} time(s) with {name} "
            f"({first.strerror})"
        )
        if self.operation == "accept()":
            message += (
                f"; it stopped accepting for {self.FIRST * 1000:g} ms to {self.MOST * 1000:g} ms"
                " at a time (doubling) and tried again, while clients waited in the listen "
                "backlog"
            )
        return OSError(first.errno, message), f"{message}\nthe first failure:\n{self._first_text}"


_reactor: Reactor | None = None
_reactor_lock = threading.Lock()
_unreported_death: ReactorDied | None = None


def get_reactor() -> Reactor:
    """The process-wide reactor (created on first use, again after a fork or its death)."""
    global _reactor
    reactor = _reactor
    if reactor is not None and reactor.death is None:
        return reactor
    with _reactor_lock:
        if _reactor is None or _reactor.death is not None:
            _reactor = Reactor()
        return _reactor


def acquire_reactor() -> Reactor:
    """:func:`get_reactor` for a server or proxy that starts now.

    Raises:
        ReactorDied: the loop died since the last call (once; the next call gets a new loop).
    """
    global _unreported_death
    if _unreported_death is not None:
        with _reactor_lock:
            death, _unreported_death = _unreported_death, None
        if death is not None:
            raise death
    return get_reactor()


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
    global _reactor, _reactor_lock, _unreported_death
    # The loop thread does not exist in the child; its sockets belong to the parent. The
    # module lock may have been held by a parent thread at fork time: make a new one.
    _reactor = None
    _unreported_death = None
    _reactor_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown_reactor, 1.0)
