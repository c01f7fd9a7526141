"""FaultProxy: a TCP proxy that applies faults, inside the test process.

Design: every socket of the proxy is non-blocking and registered with the kit's process-wide
event loop (``_runtime/reactor.py``, the loop the servers use too), and every callback runs
under that loop's lock, so a fault can act on any connection at any moment without racing a
blocked ``recv`` (a reset is a ``SO_LINGER`` 0 close). Sharing the loop with the servers is
what makes the proxy cheap in front of an in-process server: forwarding a request to
``echo_server`` and the echo back wakes no other thread, so a round trip through the proxy
costs the same two thread wake-ups as a direct one (``docs/faults.rst``, Performance).

Each connection has two pipes, ``upstream`` (client to server) and ``downstream`` (server to
client); a pipe reads its source, turns each chunk into timed segments according to the
faults that apply to it, and writes them out when they are due.
Markers in the same queue (FIN, reset, limit) keep actions in order with the data.

Changes made from other threads (``add``, ``remove``, ``down``...) run under the loop's lock
before they return, so when ``proxy.add(ResetPeer())`` returns the live connections are
reset.
"""

from __future__ import annotations

import collections
import errno
import itertools
import random
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .._runtime import values as _values
from .._runtime.reactor import (
    EVENT_READ,
    EVENT_WRITE,
    RESOURCE_ERRNOS,
    AcceptBackoff,
    Reactor,
    ReactorDied,
    Timer,
    acquire_reactor,
    is_retryable_accept_error,
)
from .._runtime.threads import format_thread_stack
from .._runtime.values import format_address
from .specs import (
    Bandwidth,
    Corrupt,
    DelayConnect,
    HoldConnect,
    Latency,
    LimitData,
    ProxyFault,
    ResetPeer,
    Slice,
    SlowClose,
    Stall,
    Timeout,
)

if TYPE_CHECKING:
    from typing_extensions import Self

_T = TypeVar("_T")
_READ = EVENT_READ
_WRITE = EVENT_WRITE
_CHUNK = 262144
_BULK = 65536  # a no-fault read this small ends a pipe's bulk mode (FaultProxy._forward)
_BURST = 0.02  # seconds of data Bandwidth may send at once to catch up
_HIGH_WATER = 1 << 20  # bytes queued in one pipe before it stops reading its source
_LINGER_ZERO = struct.pack("ii", 1, 0)
_FIN, _RESET, _LIMIT = "fin", "reset", "limit"
_CONNECT_ERRNOS = (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)
_C_CONNECT_EX = socket.SocketType.connect_ex


class ProxyError(Exception):
    """Errors in a :class:`FaultProxy`'s callbacks (raised by ``stop()`` and ``check()``)."""


@dataclass(frozen=True)
class FaultEvent:
    """One entry of :attr:`FaultProxy.log`: what happened to which connection, and where.

    Attributes:
        connection: the connection index (0 for the first the proxy accepted).
        direction: ``"upstream"``, ``"downstream"`` or ``"connection"``.
        offset: bytes of that direction's stream read before it happened.
        action: what was done (``"applied"``, ``"reset"``, ``"drop"``, ``"skipped"``...).
        fault: the fault, ``None`` for events no fault caused (a peer reset, say).
        time: ``time.monotonic()`` when it happened.
    """

    connection: int
    direction: str
    offset: int
    action: str
    fault: ProxyFault | None
    time: float

    def __str__(self) -> str:
        what = f" {self.fault!r}" if self.fault is not None else ""
        return f"#{self.connection} {self.direction} @{self.offset}: {self.action}{what}"


@dataclass(eq=False)
class ProxyConnection:
    """What the proxy saw of one connection."""

    index: int
    peer: Any
    opened_at: float
    closed_at: float | None = None
    bytes_upstream: int = 0
    """Bytes read from the client."""
    bytes_downstream: int = 0
    """Bytes read from the server."""
    how_closed: str | None = None
    """``"eof"``, ``"reset"`` (a peer reset), ``"fault-reset"`` (:class:`ResetPeer`),
    ``"connect-failed"``, ``"proxy-stop"``, ``"error"``; ``None`` while open."""

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


class _FaultHandle:
    """Returned by :meth:`FaultProxy.add`: a context manager that removes the faults."""

    def __init__(self, proxy: FaultProxy, ids: list[int]) -> None:
        self._proxy = proxy
        self._ids = ids

    def remove(self) -> None:
        self._proxy._remove_ids(self._ids)

    def __enter__(self) -> _FaultHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


class _Pipe:
    def __init__(self, conn: _Conn, direction: str, rng: random.Random) -> None:
        self.conn = conn
        self.direction = direction
        self.rng = rng
        self.offset = 0
        self.queue: collections.deque[list[Any]] = collections.deque()
        self.queued = 0
        self.eof = False
        self.fin_sent = False
        self.discard = False
        self.write_blocked = False
        self.buffer: memoryview | None = None  # see FaultProxy._forward
        self.timer_at: float | None = None
        self.last_ready = 0.0
        self.bw_next = 0.0
        self.decided: dict[int, bool] = {}
        self.logged: set[int] = set()
        self.marked: set[int] = set()

    @property
    def src(self) -> socket.socket | None:
        return self.conn.client if self.direction == "upstream" else self.conn.server

    @property
    def dst(self) -> socket.socket | None:
        return self.conn.server if self.direction == "upstream" else self.conn.client


class _Conn:
    def __init__(self, proxy: FaultProxy, record: ProxyConnection, client: socket.socket):
        self.proxy = proxy
        self.record = record
        self.index = record.index
        self.client = client
        self.server: socket.socket | None = None
        self.state = "new"  # held, delayed, connecting, open, closed
        seed = proxy.seed
        self.up = _Pipe(self, "upstream", random.Random(f"{seed}:{self.index}:upstream"))
        self.down = _Pipe(self, "downstream", random.Random(f"{seed}:{self.index}:downstream"))
        self.client_side = _Side(self, "client", client)
        self.server_side: _Side | None = None


class _Side:
    """The loop's view of one socket of a connection (an ``EventTarget``)."""

    __slots__ = ("closed", "conn", "events", "is_client", "peer", "pipe", "sock")

    def __init__(self, conn: _Conn, side: str, sock: socket.socket) -> None:
        self.closed = False
        self.conn = conn
        self.events = 0  # what it is registered for
        self.sock = sock
        self.is_client = side == "client"
        self.pipe = conn.up if self.is_client else conn.down  # the pipe this socket feeds
        self.peer: socket.socket | None = None  # where that pipe writes, once connected

    def on_event(self, mask: int) -> None:
        conn = self.conn
        proxy = conn.proxy
        mask &= self.events  # an error or hang-up is reported as both
        if mask == _READ and conn.state == "open" and not proxy._faults:
            pipe = self.pipe
            if not (pipe.queue or pipe.discard or pipe.eof):
                proxy._forward(self, pipe)
                return
        if self.is_client:
            proxy._client_event(conn, mask)
        else:
            proxy._server_event(conn, mask)

    def on_reactor_error(self, exc: BaseException) -> None:
        conn = self.conn
        conn.proxy._record_error(conn.index, exc)
        conn.proxy._abort(conn, "error", "proxy error")


class _ListenerSide:
    __slots__ = ("closed", "proxy")

    def __init__(self, proxy: FaultProxy) -> None:
        self.closed = False
        self.proxy = proxy

    def on_event(self, mask: int) -> None:
        self.proxy._accept()

    def on_reactor_error(self, exc: BaseException) -> None:
        # The reactor has unregistered the socket: record, then listen again after a pause.
        proxy = self.proxy
        proxy._record_error(None, exc)
        if not isinstance(exc, ReactorDied) and not self.closed:
            proxy._pause_accepting(None)


class FaultProxy:
    """A TCP proxy in front of ``target`` that applies faults; a context manager.

    ``with FaultProxy(server.address, faults.Latency(0.05)) as proxy:`` starts it (it is
    listening when the body begins); clients connect to ``proxy.address``.

    Args:
        target: ``(host, port)``, a Unix socket path, or any object with ``.address``.
        faults: the faults active from the start (more with :meth:`add`).
        seed: seeds every connection's generators (``random.Random(f"{seed}:{index}:
            {direction}")``); ``None`` picks one at random, shown as :attr:`seed`.
        host, port: where the proxy listens (loopback, a free port by default).
        name: a name for reports and the thread name.
        stop_timeout: seconds :meth:`stop` waits for the proxy thread.
        log_limit: the most events :attr:`log` keeps (the first ones are kept).
    """

    def __init__(
        self,
        target: Any,
        *faults: ProxyFault,
        seed: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str | None = None,
        stop_timeout: float = 5.0,
        log_limit: int = 10000,
    ) -> None:
        self._target_family, self._target = _resolve_target(target)
        for fault in faults:
            _check_fault(fault)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        _values.port(port, "port")
        if not isinstance(host, str):
            raise TypeError(f"host must be a str (an IP address or 'localhost'), got {host!r}")
        stop_timeout = _values.seconds(stop_timeout, "stop_timeout")
        if isinstance(log_limit, bool) or not isinstance(log_limit, int):
            raise TypeError(f"log_limit must be an int >= 0, got {log_limit!r}")
        if log_limit < 0:
            raise ValueError(f"log_limit must be an int >= 0, got {log_limit}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str or None, got {name!r}")
        self.seed: int = random.SystemRandom().randrange(2**32) if seed is None else seed
        self._host = "127.0.0.1" if host == "localhost" else host
        self._port = port
        self._name = name
        self.stop_timeout = float(stop_timeout)
        self._log_limit = log_limit
        self._ids = itertools.count()
        self._faults: list[tuple[int, ProxyFault]] = [(next(self._ids), f) for f in faults]
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._log: list[FaultEvent] = []
        self._records: list[ProxyConnection] = []
        self._errors: list[tuple[int | None, BaseException, str]] = []
        self._reported = 0
        self._state = "new"
        self._address: tuple[str, int] | None = None
        self._listener: socket.socket | None = None
        self._listener_side: _ListenerSide | None = None
        self._reactor: Reactor | None = None
        self._view = memoryview(bytearray(0))  # the loop's receive buffer, once started
        self._timers: set[Timer] = set()
        self._live: dict[int, _Conn] = {}
        self._backoff: AcceptBackoff | None = None  # made when accept() first fails
        self._dial_failures: AcceptBackoff | None = None  # dialing the target ran out too

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Listen (on the kit's event loop, started if need be). Returns ``self``."""
        if self._state != "new":
            raise RuntimeError(f"fault proxy {self.name} was already started; create a new one")
        reactor = acquire_reactor()
        reactor.start()
        self._reactor = reactor
        # Used under the loop's lock only, like the servers' native connections use it.
        self._view = reactor.view

        def begin() -> None:
            self._open_listener()
            reactor.holds += 1  # keeps the loop while down() (see shutdown_reactor_if_idle)

        try:
            self._in_loop(begin)
        except BaseException:
            self._reactor = None
            self._state = "stopped"
            raise
        self._state = "started"
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Close every connection and the listener (waiting at most ``timeout`` seconds for
        the event loop, if it is busy in a callback).

        Raises:
            ProxyError: an error happened in the proxy's callbacks, or the loop did not let
                go in time.
        """
        timeout = self.stop_timeout if timeout is None else _values.seconds(timeout, "timeout")
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopped"
        reactor = self._reactor
        assert reactor is not None

        def shut() -> None:
            self._shutdown_all()
            reactor.holds -= 1

        self._in_loop(shut, timeout, what="stop()")
        self.check()

    def check(self) -> None:
        """Raise :class:`ProxyError` now for errors in the proxy thread not raised before."""
        with self._lock:
            self._note_resource_failures()
            new = self._errors[self._reported :]
            self._reported = len(self._errors)
        if new:
            parts = [f"{len(new)} error(s) in fault proxy {self.name} (seed={self.seed}):"]
            for index, exc, text in new:
                where = "in the proxy loop" if index is None else f"in connection #{index}"
                parts.append(f"--- {type(exc).__name__} {where}; traceback:\n{text}")
            raise ProxyError("\n".join(parts).rstrip())

    # -- faults ------------------------------------------------------------------------

    @property
    def faults(self) -> tuple[ProxyFault, ...]:
        """The faults active now, in the order they were added."""
        with self._lock:
            return tuple(f for _, f in self._faults)

    def add(self, *faults: ProxyFault) -> _FaultHandle:
        """Add faults to the live proxy; they act on open connections too.

        Returns a handle; ``with proxy.add(faults.Latency(0.1)):`` removes them at the end
        of the block (``handle.remove()`` does it by hand).
        """
        for fault in faults:
            _check_fault(fault)
        entries = [(next(self._ids), f) for f in faults]

        def change() -> None:
            with self._lock:
                self._faults.extend(entries)
            self._faults_changed()

        self._in_loop(change)
        return _FaultHandle(self, [i for i, _ in entries])

    def remove(self, *faults: ProxyFault) -> None:
        """Remove faults (each the first added one equal to it). ``ValueError`` if absent."""
        with self._lock:
            current = list(self._faults)
        ids: list[int] = []
        for fault in faults:
            for fid, have in current:
                if fid not in ids and have == fault:
                    ids.append(fid)
                    break
            else:
                raise ValueError(f"faults: {fault!r} is not active on this proxy")
        self._remove_ids(ids)

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            ids = [i for i, _ in self._faults]
        self._remove_ids(ids)

    def _remove_ids(self, ids: list[int]) -> None:
        def change() -> None:
            with self._lock:
                self._faults = [(i, f) for i, f in self._faults if i not in ids]
            self._faults_changed()

        self._in_loop(change)

    def down(self, *, reset_connections: bool = False) -> None:
        """Stop listening: new connections are refused (``ECONNREFUSED``) until :meth:`up`.

        Args:
            reset_connections: also reset (RST) the connections that are open.
        """

        def change() -> None:
            self._close_listener()
            if reset_connections:
                for conn in list(self._live.values()):
                    self._abort(conn, "fault-reset", "proxy down")

        self._in_loop(change)

    def up(self) -> None:
        """Listen again on the same address after :meth:`down`."""
        if self._state != "started":
            raise RuntimeError(f"fault proxy {self.name} is not running ({self._state})")
        self._in_loop(lambda: None if self._listener is not None else self._open_listener())

    def refusing(self, *, reset_connections: bool = False) -> _DownScope:
        """``with proxy.refusing():`` the proxy is down for the block, then up again."""
        return _DownScope(self, reset_connections)

    # -- what it saw -------------------------------------------------------------------

    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        where = format_address(self._address) if self._address else "unbound"
        return f"{where}->{format_address(self._target)}"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` where clients connect."""
        if self._address is None:
            raise RuntimeError(f"fault proxy {self.name} has no address until start()")
        return self._address

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        return f"http://{format_address(self.address)}"

    @property
    def target(self) -> Any:
        return self._target

    @property
    def log(self) -> list[FaultEvent]:
        """A snapshot of the fault log, oldest first."""
        with self._lock:
            return list(self._log)

    def format_log(self, limit: int = 50) -> str:
        """The seed and the last ``limit`` log events, one a line (for failure reports)."""
        events = self.log
        lines = [f"fault proxy {self.name}: seed={self.seed}, {len(events)} event(s)"]
        if len(events) > limit:
            lines.append(f"  ... {len(events) - limit} earlier event(s)")
        lines += [f"  {e}" for e in events[-limit:]]
        return "\n".join(lines)

    @property
    def connections(self) -> list[ProxyConnection]:
        with self._lock:
            return list(self._records)

    @property
    def errors(self) -> list[BaseException]:
        with self._lock:
            self._note_resource_failures()
            return [exc for _, exc, _ in self._errors]

    def _note_resource_failures(self) -> None:
        """Record the accept()/dial failures counted since the last report (lock held)."""
        for counter in (self._backoff, self._dial_failures):
            taken = counter.take_report() if counter is not None else None
            if taken is not None:
                self._errors.append((None, *taken))

    def wait_for_connections(
        self, count: int = 1, *, closed: bool = False, timeout: float = 10.0
    ) -> list[ProxyConnection]:
        """Block until ``count`` connections were accepted (or closed); ``TimeoutError``."""
        count, timeout = _values.wait_arguments(count, timeout)

        def ready() -> bool:
            n = sum(1 for r in self._records if r.closed) if closed else len(self._records)
            return n >= count

        with self._changed:
            if not self._changed.wait_for(ready, timeout):
                raise TimeoutError(
                    f"fault proxy {self.name}: waited {timeout:g}s for {count} "
                    f"{'closed ' if closed else ''}connection(s); saw {len(self._records)}"
                )
            return list(self._records)

    def __repr__(self) -> str:
        return f"<FaultProxy {self.name} seed={self.seed} {self._state}>"

    # -- loop plumbing -------------------------------------------------------------------

    def _in_loop(
        self, fn: Callable[[], _T], timeout: float = 10.0, what: str = "a change"
    ) -> _T:
        """Run ``fn`` under the event loop's lock (as its callbacks do) and return its result."""
        reactor = self._reactor
        if reactor is None or reactor.in_loop_thread():
            return fn()
        if not reactor.lock.acquire(timeout=timeout):
            thread = reactor.thread
            stack = format_thread_stack(thread) if thread is not None else "(no thread)"
            raise ProxyError(
                f"fault proxy {self.name}: the event loop did not let go in {timeout:g}s "
                f"(for {what}); its thread's current stack:\n{stack}"
            )
        try:
            return fn()
        finally:
            reactor.lock.release()

    def _later(self, when: float, fn: Callable[[], None], conn: _Conn | None = None) -> None:
        """Call ``fn`` in the loop at ``when`` (``time.monotonic()``); lock held."""
        reactor = self._reactor
        assert reactor is not None
        timers = self._timers

        def fire() -> None:
            timers.discard(timer)
            if conn is None or conn.state != "closed":
                fn()

        def on_error(exc: BaseException) -> None:
            self._record_error(conn.index if conn is not None else None, exc)
            if conn is not None:
                self._abort(conn, "error", "proxy error")

        timer = reactor.call_at_locked(when, fire, on_error)
        timers.add(timer)

    def _record_error(self, index: int | None, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        with self._lock:
            self._errors.append((index, exc, text))

    def _event(self, conn: _Conn, direction: str, offset: int, action: str,
               fault: ProxyFault | None) -> None:
        event = FaultEvent(conn.index, direction, offset, action, fault, time.monotonic())
        with self._lock:
            if len(self._log) < self._log_limit:
                self._log.append(event)

    def _open_listener(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            port = self._address[1] if self._address else self._port
            try:
                sock.bind((self._host, port))
            except OSError as exc:
                where = format_address((self._host, port))
                raise OSError(
                    exc.errno, f"fault proxy cannot listen on {where}: {exc.strerror}"
                ) from None
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._address = tuple(sock.getsockname()[:2])
        self._listener = sock
        self._listener_side = _ListenerSide(self)
        assert self._reactor is not None
        self._reactor.register_locked(sock, _READ, self._listener_side)

    def _close_listener(self) -> None:
        if self._backoff is not None:
            self._backoff.cancel()
        sock, self._listener = self._listener, None
        side, self._listener_side = self._listener_side, None
        if side is not None:
            side.closed = True
        if sock is not None:
            if self._reactor is not None:
                self._reactor.unregister_locked(sock)
            sock.close()

    def _shutdown_all(self) -> None:
        self._close_listener()
        for conn in list(self._live.values()):
            self._finish(conn, "proxy-stop", rst=False)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    # -- connections -----------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(64):
            try:
                fd, peer = listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if is_retryable_accept_error(exc):
                    continue
                self._pause_accepting(exc)
                return
            if self._backoff is not None:
                self._backoff.succeeded()
            client = socket.socket(listener.family, socket.SOCK_STREAM, 0, fileno=fd)
            client.setblocking(False)
            _nodelay(client)
            with self._lock:
                record = ProxyConnection(len(self._records), tuple(peer[:2]), time.time())
                self._records.append(record)
                self._changed.notify_all()
            conn = _Conn(self, record, client)
            self._live[conn.index] = conn
            self._begin(conn)

    def _pause_accepting(self, exc: OSError | None) -> None:
        """accept() failed (descriptors exhausted, say): stop listening for a while.

        The listening socket stays readable, so trying again at once would spin; the
        failures are counted and reported once, not one per try.
        """
        backoff = self._backoff
        if backoff is None:
            backoff = self._backoff = AcceptBackoff(f"fault proxy {self.name}")
        listener, side, reactor = self._listener, self._listener_side, self._reactor
        if listener is None or side is None or reactor is None:
            return
        reactor.unregister_locked(listener)
        if exc is not None:
            backoff.failed(exc)

        def resume() -> None:
            if self._listener is listener and not side.closed:
                reactor.register_locked(listener, _READ, side)
                self._accept()

        backoff.schedule(reactor, resume, side.on_reactor_error)

    def _chosen(self, pipe: _Pipe, fid: int, fault: ProxyFault) -> bool:
        """Whether ``fault`` applies to this pipe: drawn once, from the pipe's generator."""
        chosen = pipe.decided.get(fid)
        if chosen is None:
            chosen = fault.chance >= 1.0 or pipe.rng.random() < fault.chance
            pipe.decided[fid] = chosen
            if fault.chance < 1.0:
                action = "chosen" if chosen else "skipped"
                self._event(pipe.conn, pipe.direction, pipe.offset, action, fault)
        return chosen

    def _active(self, pipe: _Pipe) -> list[tuple[int, ProxyFault]]:
        return [
            (fid, fault)
            for fid, fault in self._faults
            if fault.applies_to(pipe.direction)
            and not isinstance(fault, (HoldConnect, DelayConnect))
            and self._chosen(pipe, fid, fault)
        ]

    def _connect_faults(self, conn: _Conn) -> list[tuple[int, ProxyFault]]:
        # Connection faults ignore direction; their draw comes from the upstream generator.
        return [
            (fid, fault)
            for fid, fault in self._faults
            if isinstance(fault, (HoldConnect, DelayConnect)) and self._chosen(conn.up, fid, fault)
        ]

    def _begin(self, conn: _Conn) -> None:
        cfaults = self._connect_faults(conn)
        if any(isinstance(f, HoldConnect) for _, f in cfaults):
            if conn.state != "held":
                hold = next(f for _, f in cfaults if isinstance(f, HoldConnect))
                self._event(conn, "connection", 0, "hold", hold)
            conn.state = "held"
            return
        if conn.state == "new":
            delays = [f for _, f in cfaults if isinstance(f, DelayConnect)]
            if delays:
                fault = max(delays, key=lambda f: f.seconds)
                self._event(conn, "connection", 0, f"delay connect {fault.seconds:g}s", fault)
                conn.state = "delayed"
                self._later(time.monotonic() + fault.seconds, lambda: self._dial(conn), conn)
                return
        self._dial(conn)

    def _dial(self, conn: _Conn) -> None:
        if conn.state in ("closed", "connecting", "open"):
            return
        try:
            server = socket.socket(self._target_family, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno not in RESOURCE_ERRNOS:
                raise
            failures = self._dial_failures
            if failures is None:
                failures = self._dial_failures = AcceptBackoff(
                    f"fault proxy {self.name}", operation="socket() for dialing the target"
                )
            failures.failed(exc)
            self._connect_failed(conn, exc.errno or 0)
            return
        server.setblocking(False)
        conn.server = server
        conn.server_side = _Side(conn, "server", server)
        conn.server_side.peer = conn.client
        conn.client_side.peer = server
        conn.state = "connecting"
        # The C method, not socket.socket's: under SocketFaults, sockets connected through
        # the patched one are the code under test's (and this may run in any thread).
        err = _C_CONNECT_EX(server, self._target)
        if err not in _CONNECT_ERRNOS:
            self._connect_failed(conn, err)
            return
        self._update(conn)

    def _connect_failed(self, conn: _Conn, err: int) -> None:
        name = errno.errorcode.get(err, str(err))
        self._event(conn, "connection", 0, f"connect to target failed: {name}", None)
        self._finish(conn, "connect-failed", rst=True)

    def _on_connected(self, conn: _Conn) -> None:
        assert conn.server is not None
        err = conn.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(conn, err)
            return
        try:
            conn.server.getpeername()
        except OSError:
            # Not connected yet: the shared loop looks targets up when it dispatches, so an
            # event of a socket closed earlier in the same batch can reach a new socket that
            # got its descriptor number. Wait for the real event.
            return
        if self._target_family != socket.AF_UNIX:
            _nodelay(conn.server)
        conn.state = "open"
        self._thresholds(conn.up)
        self._thresholds(conn.down)
        self._flush(conn.up)

    def _faults_changed(self) -> None:
        for conn in list(self._live.values()):
            if conn.state == "closed":
                continue
            if conn.state == "held":
                self._begin(conn)
            for pipe in (conn.up, conn.down):
                if conn.state == "open":
                    self._thresholds(pipe)
                    if conn.state == "closed":
                        break
                    self._flush(pipe)
            if conn.state != "closed":
                self._update(conn)

    def _want_read(self, pipe: _Pipe) -> bool:
        conn = pipe.conn
        if pipe.eof or pipe.queued >= _HIGH_WATER:
            return False
        if pipe.direction == "downstream" and conn.state != "open":
            return False
        if conn.state not in ("open", "connecting"):
            return False
        for fid, fault in self._active(pipe):
            if isinstance(fault, Stall) and pipe.offset >= fault.after_bytes:
                if fid not in pipe.logged:
                    pipe.logged.add(fid)
                    self._event(conn, pipe.direction, pipe.offset, "stall", fault)
                return False
        return True

    def _update(self, conn: _Conn) -> None:
        """Register each socket for what its pipes need now."""
        if conn.state == "closed" or self._reactor is None:
            return
        client_ev = (_READ if self._want_read(conn.up) else 0) | (
            _WRITE if conn.down.write_blocked else 0
        )
        self._set_events(conn.client_side, client_ev)
        if conn.server_side is not None:
            server_ev = (_READ if self._want_read(conn.down) else 0) | (
                _WRITE if conn.up.write_blocked or conn.state == "connecting" else 0
            )
            self._set_events(conn.server_side, server_ev)

    def _set_events(self, side: _Side, events: int) -> None:
        have = side.events
        if have == events:
            return
        reactor = self._reactor
        assert reactor is not None
        if not have:
            reactor.register_locked(side.sock, events, side)
        elif not events:
            reactor.unregister_locked(side.sock)
        else:
            reactor.modify_locked(side.sock, events, side)
        side.events = events

    def _client_event(self, conn: _Conn, mask: int) -> None:
        if mask & _WRITE:
            self._flush(conn.down)
        if mask & _READ and conn.state != "closed":
            self._read(conn.up)
        self._update(conn)

    def _server_event(self, conn: _Conn, mask: int) -> None:
        if conn.state == "connecting":
            if mask & (_WRITE | _READ):
                self._on_connected(conn)
            self._update(conn)
            return
        if mask & _WRITE:
            self._flush(conn.up)
        if mask & _READ and conn.state != "closed":
            self._read(conn.down)
        self._update(conn)

    def _forward(self, side: _Side, pipe: _Pipe) -> None:
        """The no-fault path: nothing queued, so what arrives is sent on at once.

        It reads into a reused buffer: a fresh 256 KiB ``bytes`` per ``recv`` would cost an
        ``mmap``, an ``mremap`` and a ``munmap`` (glibc's threshold for ``mmap`` is 128 KiB)
        and a page fault per 4 KiB touched. Small messages use the loop's shared buffer. Once
        a send falls short (a bulk transfer), the pipe gets a buffer of its own, whose unsent
        tail can wait in the queue without a copy: this path runs again only once the queue
        is empty, and the general path reads into fresh ``bytes``.
        """
        conn = side.conn
        dst = side.peer
        assert dst is not None
        view = pipe.buffer if pipe.buffer is not None else self._view
        try:
            n = side.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._event(conn, pipe.direction, pipe.offset, f"peer error: {exc}", None)
            self._abort(conn, "reset", None)
            return
        if not n:
            pipe.eof = True
            self._push(pipe, 0.0, _FIN)
            self._flush(pipe)
            return
        pipe.offset += n
        if side.is_client:
            conn.record.bytes_upstream += n
        else:
            conn.record.bytes_downstream += n
        try:
            sent = dst.send(view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._event(conn, pipe.direction, pipe.offset, f"peer error: {exc}", None)
            self._abort(conn, "reset", None)
            return
        if sent < n:
            if pipe.buffer is None:
                own = bytearray(_CHUNK)
                own[:n] = view[:n]
                view = pipe.buffer = memoryview(own)
            self._push(pipe, 0.0, view[sent:n])
            pipe.write_blocked = True
            self._update(conn)
        elif pipe.buffer is not None and n < _BULK:
            pipe.buffer = None  # no longer a bulk transfer

    # -- data ----------------------------------------------------------------------------

    def _read(self, pipe: _Pipe) -> None:
        conn = pipe.conn
        src = pipe.src
        if src is None or pipe.eof:
            return
        active = self._active(pipe)
        limit = _CHUNK
        for _, fault in active:
            mark = _threshold(fault)
            if mark is not None and mark > pipe.offset:
                limit = min(limit, mark - pipe.offset)
        try:
            data = src.recv(limit)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._event(conn, pipe.direction, pipe.offset, f"peer error: {exc}", None)
            self._abort(conn, "reset", None)
            return
        now = time.monotonic()
        if not data:
            pipe.eof = True
            delay = max(
                (f.seconds for _, f in active if isinstance(f, SlowClose)), default=0.0
            )
            if delay:
                self._event(conn, pipe.direction, pipe.offset, f"slow close {delay:g}s", None)
            self._push(pipe, now + delay, _FIN)
            self._flush(pipe)
            return
        offset = pipe.offset
        pipe.offset += len(data)
        if pipe.direction == "upstream":
            conn.record.bytes_upstream += len(data)
        else:
            conn.record.bytes_downstream += len(data)
        if pipe.discard:
            return
        for fid, fault in active:
            if isinstance(fault, Timeout) and offset >= fault.after_bytes:
                if fid not in pipe.logged:
                    pipe.logged.add(fid)
                    self._event(conn, pipe.direction, offset, "drop from here", fault)
                return
        self._shape(pipe, active, data, offset, now)
        self._thresholds(pipe)
        if conn.state != "closed":
            self._flush(pipe)

    def _shape(self, pipe: _Pipe, active: list[tuple[int, ProxyFault]], data: bytes,
               offset: int, now: float) -> None:
        rng = pipe.rng
        buf: bytes | bytearray = data
        pieces: list[tuple[float, int]] = []  # (extra delay, length)
        pos: int
        ready = now
        for fid, fault in active:
            first = fid not in pipe.logged
            if isinstance(fault, Corrupt):
                buf = bytearray(buf) if isinstance(buf, bytes) else buf
                flipped = []
                end = offset + len(buf)
                for where in fault.offsets:
                    if offset <= where < end:
                        buf[where - offset] ^= fault.mask
                        flipped.append(where)
                if fault.rate > 0:
                    for i in range(len(buf)):
                        if rng.random() < fault.rate:
                            buf[i] ^= fault.mask
                            flipped.append(offset + i)
                for where in flipped:
                    self._event(pipe.conn, pipe.direction, where, "corrupt", fault)
                continue
            if isinstance(fault, Latency):
                jitter = rng.uniform(-fault.jitter, fault.jitter) if fault.jitter else 0.0
                ready += max(0.0, fault.seconds + jitter)
            elif not isinstance(fault, (Slice, Bandwidth)):
                continue
            if first:
                pipe.logged.add(fid)
                self._event(pipe.conn, pipe.direction, offset, "applied", fault)
        slices = [f for _, f in active if isinstance(f, Slice)]
        view = memoryview(buf)
        if slices:
            fault = slices[0]
            pos, step = 0, 0.0
            while pos < len(view):
                size = fault.size
                if fault.variation:
                    size += rng.randint(-fault.variation, fault.variation)
                pieces.append((step * fault.delay, min(size, len(view) - pos)))
                pos += size
                step += 1.0
        else:
            pieces.append((0.0, len(view)))
        rates = [f.bytes_per_second for _, f in active if isinstance(f, Bandwidth)]
        rate = min(rates) if rates else None
        base = max(ready, pipe.last_ready)
        pos = 0
        for extra, length in pieces:
            at = max(base + extra, pipe.last_ready)
            if rate is None:
                self._push(pipe, at, view[pos : pos + length])
                pipe.last_ready = at
                pos += length
                continue
            step_bytes = max(1, int(rate * 0.01))
            end = pos + length
            while pos < end:
                n = min(step_bytes, end - pos)
                # A token bucket _BURST deep: after the proxy thread was kept from running
                # (a busy machine) the stream may catch up that much, no more.
                slot = max(pipe.bw_next, now - _BURST)
                at = max(at, slot)
                self._push(pipe, at, view[pos : pos + n])
                pipe.bw_next = slot + n / rate
                pipe.last_ready = at
                pos += n

    def _thresholds(self, pipe: _Pipe) -> None:
        """Queue the reset or limit markers whose byte count this pipe has reached."""
        conn = pipe.conn
        if conn.state != "open":
            return
        for fid, fault in self._active(pipe):
            if fid in pipe.marked:
                continue
            if isinstance(fault, ResetPeer) and pipe.offset >= fault.after_bytes:
                pipe.marked.add(fid)
                self._push(pipe, pipe.last_ready, (_RESET, fault))
            elif isinstance(fault, LimitData) and pipe.offset >= fault.nbytes:
                pipe.marked.add(fid)
                self._push(pipe, pipe.last_ready, (_LIMIT, fault))
        self._flush(pipe)

    def _push(self, pipe: _Pipe, at: float, item: Any) -> None:
        pipe.queue.append([at, item])
        if isinstance(item, memoryview):
            pipe.queued += len(item)

    def _flush(self, pipe: _Pipe) -> None:
        conn = pipe.conn
        dst = pipe.dst
        if conn.state != "open" or dst is None:
            return
        queue = pipe.queue
        now = time.monotonic()
        while queue:
            at, item = queue[0]
            if at > now:
                now = time.monotonic()
                if at > now:
                    if pipe.timer_at is None or pipe.timer_at > at:
                        pipe.timer_at = at
                        self._later(at, lambda: self._timer(pipe), conn)
                    break
            if isinstance(item, memoryview):
                try:
                    n = dst.send(item)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError as exc:
                    self._event(conn, pipe.direction, pipe.offset, f"peer error: {exc}", None)
                    self._abort(conn, "reset", None)
                    return
                if n < len(item):
                    queue[0][1] = item[n:]
                    pipe.queued -= n
                    pipe.write_blocked = True
                    break
                queue.popleft()
                pipe.queued -= n
                continue
            queue.popleft()
            if item == _FIN:
                self._send_fin(pipe)
            elif item[0] == _RESET:
                self._event(conn, pipe.direction, pipe.offset, "reset", item[1])
                self._abort(conn, "fault-reset", None)
                return
            elif item[0] == _LIMIT:
                self._event(conn, pipe.direction, pipe.offset, "limit reached: FIN", item[1])
                pipe.discard = True
                queue.clear()
                pipe.queued = 0
                self._send_fin(pipe)
                other = conn.down if pipe is conn.up else conn.up
                other.discard = True
                if not other.fin_sent:
                    other.queue.clear()
                    other.queued = 0
                    self._send_fin(other)
        else:
            pipe.write_blocked = False
        if conn.state != "closed":
            self._update(conn)

    def _timer(self, pipe: _Pipe) -> None:
        pipe.timer_at = None
        if pipe.conn.state != "closed":
            self._flush(pipe)

    def _send_fin(self, pipe: _Pipe) -> None:
        conn = pipe.conn
        if not pipe.fin_sent:
            pipe.fin_sent = True
            dst = pipe.dst
            if dst is not None:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if conn.up.fin_sent and conn.down.fin_sent and conn.up.eof and conn.down.eof:
            self._finish(conn, "eof", rst=False)

    def _abort(self, conn: _Conn, how: str, why: str | None) -> None:
        if why:
            self._event(conn, "connection", 0, why, None)
        self._finish(conn, how, rst=True)

    def _finish(self, conn: _Conn, how: str, *, rst: bool) -> None:
        if conn.state == "closed":
            return
        conn.state = "closed"
        for side in (conn.client_side, conn.server_side):
            if side is None:
                continue
            side.closed = True
            sock = side.sock
            if side.events and self._reactor is not None:
                self._reactor.unregister_locked(sock)
                side.events = 0
            if rst:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
                except OSError:
                    pass
            sock.close()
        self._live.pop(conn.index, None)
        with self._lock:
            conn.record.how_closed = how
            conn.record.closed_at = time.time()
            self._changed.notify_all()


class _DownScope:
    def __init__(self, proxy: FaultProxy, reset_connections: bool) -> None:
        self._proxy = proxy
        self._reset = reset_connections

    def __enter__(self) -> FaultProxy:
        self._proxy.down(reset_connections=self._reset)
        return self._proxy

    def __exit__(self, *exc_info: object) -> None:
        self._proxy.up()


def _threshold(fault: ProxyFault) -> int | None:
    if isinstance(fault, (Timeout, Stall, ResetPeer)):
        return fault.after_bytes
    if isinstance(fault, LimitData):
        return fault.nbytes
    return None


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _check_fault(fault: object) -> None:
    if not isinstance(fault, ProxyFault):
        raise TypeError(
            f"faults must be proxy faults (faults.Latency(...), faults.ResetPeer(...)...), "
            f"got {fault!r}"
        )


def _resolve_target(target: Any) -> tuple[socket.AddressFamily, Any]:
    address = getattr(target, "address", target)
    if isinstance(address, str):
        return socket.AF_UNIX, _values.unix_path(address, "target (a Unix socket path)")
    if (
        isinstance(address, tuple)
        and len(address) >= 2
        and isinstance(address[0], str)
        and isinstance(address[1], int)
        and not isinstance(address[1], bool)
    ):
        host = address[0]
        port = _values.port(address[1], "target port", allow_zero=False)
        if host == "localhost":
            return socket.AF_INET, ("127.0.0.1", port)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ValueError(f"target host {host!r} does not resolve ({exc})") from None
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr
    raise TypeError(
        f"target must be a (host, port) tuple, a Unix socket path or an object with "
        f".address, got {target!r}"
    )


__all__ = ["FaultEvent", "FaultProxy", "ProxyConnection", "ProxyError"]
