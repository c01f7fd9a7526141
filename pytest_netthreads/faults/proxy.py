"""FaultProxy: a TCP proxy that applies faults, inside the test process.

Design: each proxy runs one event loop thread (``selectors`` plus a timer heap) that owns
every socket of the proxy, so a fault can act on any connection at any moment without
racing a blocked ``recv`` (a reset is a ``SO_LINGER`` 0 close done by the thread that owns
the socket). Each connection has two pipes, ``upstream`` (client to server) and
``downstream`` (server to client); a pipe reads its source, turns each chunk into timed
segments according to the faults that apply to it, and writes them out when they are due.
Markers in the same queue (FIN, reset, limit) keep actions in order with the data.

Changes made from other threads (``add``, ``remove``, ``down``...) are handed to the loop
and waited for, so when ``proxy.add(ResetPeer())`` returns the live connections are reset.
"""

from __future__ import annotations

import collections
import errno
import functools
import heapq
import itertools
import random
import select
import selectors
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .._threads import format_thread_stack
from .insocket import exempt_current_thread
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
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_EPOLL_ERR_HUP = getattr(select, "EPOLLERR", 8) | getattr(select, "EPOLLHUP", 16)
_CHUNK = 262144
_BURST = 0.02  # seconds of data Bandwidth may send at once to catch up
_HIGH_WATER = 1 << 20  # bytes queued in one pipe before it stops reading its source
_LINGER_ZERO = struct.pack("ii", 1, 0)
_FIN, _RESET, _LIMIT = "fin", "reset", "limit"
_CONNECT_ERRNOS = (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)


class _Poller:
    """``select.epoll`` used directly where there is one (the ``selectors`` layer costs a few
    microseconds an event, which a round trip through the proxy pays twice); ``selectors``
    elsewhere. Events are ``_READ``/``_WRITE``; ``poll`` returns ``(data, events)`` pairs."""

    def __init__(self) -> None:
        self._data: dict[int, tuple[Any, int]] = {}
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._selector = None if self._epoll is not None else selectors.DefaultSelector()

    def register(self, sock: socket.socket, events: int, data: Any) -> None:
        fd = sock.fileno()
        self._data[fd] = (data, events)
        if self._epoll is not None:
            self._epoll.register(fd, (events & 1) | ((events & 2) << 1))
        else:
            assert self._selector is not None
            self._selector.register(fd, events, data)

    def modify(self, sock: socket.socket, events: int, data: Any) -> None:
        fd = sock.fileno()
        self._data[fd] = (data, events)
        if self._epoll is not None:
            self._epoll.modify(fd, (events & 1) | ((events & 2) << 1))
        else:
            assert self._selector is not None
            self._selector.modify(fd, events, data)

    def unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._data.pop(fd, None) is None:
            return
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            assert self._selector is not None
            self._selector.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[Any, int]]:
        if self._epoll is None:
            assert self._selector is not None
            return [(key.data, mask) for key, mask in self._selector.select(timeout)]
        out = []
        get = self._data.get
        for fd, ev in self._epoll.poll(-1 if timeout is None else timeout):
            entry = get(fd)
            if entry is not None:
                mask = (ev & 1) | ((ev >> 1) & 2)
                if ev & _EPOLL_ERR_HUP:
                    mask = 3
                out.append((entry[0], mask & entry[1]))
        return out

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()
        self._data.clear()


class ProxyError(Exception):
    """Errors inside a :class:`FaultProxy`'s thread (raised by ``stop()`` and ``check()``)."""


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
        self.events: dict[int, int] = {}
        self.on_client = functools.partial(proxy._client_event, self)
        self.on_server = functools.partial(proxy._server_event, self)


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
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
        if not isinstance(host, str):
            raise TypeError(f"host must be a str (an IP address or 'localhost'), got {host!r}")
        if not isinstance(stop_timeout, (int, float)) or not stop_timeout >= 0:
            raise ValueError(f"stop_timeout must be a number of seconds >= 0, got {stop_timeout!r}")
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
        self._selector: _Poller | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._live: dict[int, _Conn] = {}
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Listen and start the proxy thread. Returns ``self``."""
        if self._state != "new":
            raise RuntimeError(f"fault proxy {self.name} was already started; create a new one")
        self._selector = _Poller()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        try:
            self._open_listener()
        except BaseException:
            self._close_loop_resources()
            self._state = "stopped"
            raise
        self._state = "started"
        self._thread = threading.Thread(
            target=self._run, name=f"netthreads-faultproxy[{self.name}]", daemon=True
        )
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Close every connection and the listener, join the thread (bounded).

        Raises:
            ProxyError: an error happened in the proxy thread, or it did not stop in time.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopped"
        timeout = self.stop_timeout if timeout is None else timeout
        self._stopping = True
        self._wake()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise ProxyError(
                    f"fault proxy {self.name}: thread {thread.name!r} still running "
                    f"{timeout:g}s after stop(); current stack:\n{format_thread_stack(thread)}"
                )
        self._close_loop_resources()
        self.check()

    def check(self) -> None:
        """Raise :class:`ProxyError` now for errors in the proxy thread not raised before."""
        with self._lock:
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
        where = _fmt(self._address) if self._address else "unbound"
        return f"{where}->{_fmt(self._target)}"

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
        return f"http://{_fmt(self.address)}"

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
            return [exc for _, exc, _ in self._errors]

    def wait_for_connections(
        self, count: int = 1, *, closed: bool = False, timeout: float = 10.0
    ) -> list[ProxyConnection]:
        """Block until ``count`` connections were accepted (or closed); ``TimeoutError``."""

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

    def _in_loop(self, fn: Callable[[], None], timeout: float = 10.0) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            fn()
            return
        done = threading.Event()
        box: list[BaseException] = []

        def call() -> None:
            try:
                fn()
            except BaseException as exc:
                box.append(exc)
            finally:
                done.set()

        self._calls.append(call)
        self._wake()
        deadline = time.monotonic() + timeout
        while not done.wait(0.05):
            if not thread.is_alive():  # it stopped before it got to the call: run it here
                try:
                    self._calls.remove(call)
                except ValueError:
                    done.wait(timeout)
                else:
                    call()
                break
            if time.monotonic() > deadline:
                raise ProxyError(
                    f"fault proxy {self.name}: its thread did not answer in {timeout:g}s"
                )
        if box:
            raise box[0]

    def _wake(self) -> None:
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass

    def _later(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_seq), fn))

    def _run(self) -> None:
        exempt_current_thread()
        selector = self._selector
        assert selector is not None
        try:
            while not self._stopping:
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                for data, mask in selector.poll(timeout):
                    if data is None:
                        try:
                            while self._wake_r is not None and self._wake_r.recv(4096):
                                pass
                        except OSError:
                            pass
                        continue
                    self._guard(data[0], data[1], mask)
                while self._calls:
                    self._calls.popleft()()
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, fn = heapq.heappop(self._timers)
                    self._guard(None, fn, 0)
        except BaseException as exc:
            self._record_error(None, exc)
        finally:
            self._shutdown_all()

    def _guard(self, conn: _Conn | None, fn: Callable[..., None], mask: int) -> None:
        try:
            if conn is None:
                fn() if mask == 0 else fn(mask)
            else:
                if conn.state == "closed":
                    return
                fn(mask)
        except BaseException as exc:
            self._record_error(conn.index if conn else None, exc)
            if conn is not None:
                self._abort(conn, "error", "proxy error")

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
                raise OSError(
                    exc.errno, f"fault proxy cannot listen on {_fmt((self._host, port))}: "
                    f"{exc.strerror}"
                ) from None
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._address = tuple(sock.getsockname()[:2])
        self._listener = sock
        assert self._selector is not None
        self._selector.register(sock, _READ, (None, self._accept))

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None and self._selector is not None:
            self._selector.unregister(sock)
            sock.close()

    def _close_loop_resources(self) -> None:
        self._close_listener()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None

    def _shutdown_all(self) -> None:
        for conn in list(self._live.values()):
            self._finish(conn, "proxy-stop", rst=False)
        self._timers.clear()
        while self._calls:
            self._calls.popleft()()

    # -- connections -----------------------------------------------------------------------

    def _accept(self, mask: int) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(64):
            try:
                fd, peer = listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
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
                self._later(time.monotonic() + fault.seconds, lambda: self._dial(conn))
                return
        self._dial(conn)

    def _dial(self, conn: _Conn) -> None:
        if conn.state in ("closed", "connecting", "open"):
            return
        server = socket.socket(self._target_family, socket.SOCK_STREAM)
        server.setblocking(False)
        conn.server = server
        conn.state = "connecting"
        err = server.connect_ex(self._target)
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
        if conn.state == "closed" or self._selector is None:
            return
        client_ev = (_READ if self._want_read(conn.up) else 0) | (
            _WRITE if conn.down.write_blocked else 0
        )
        self._set_events(conn, conn.client, client_ev, "client")
        if conn.server is not None:
            server_ev = (_READ if self._want_read(conn.down) else 0) | (
                _WRITE if conn.up.write_blocked or conn.state == "connecting" else 0
            )
            self._set_events(conn, conn.server, server_ev, "server")

    def _set_events(self, conn: _Conn, sock: socket.socket, events: int, side: str) -> None:
        assert self._selector is not None
        fd = sock.fileno()
        have = conn.events.get(fd, 0)
        if have == events:
            return
        handler = conn.on_client if side == "client" else conn.on_server
        if not have:
            self._selector.register(sock, events, (conn, handler))
        elif not events:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, events, (conn, handler))
        conn.events[fd] = events

    def _client_event(self, conn: _Conn, mask: int) -> None:
        if mask == _READ and not self._faults and conn.state == "open" and self._fast(conn.up):
            return
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
        if mask == _READ and not self._faults and self._fast(conn.down):
            return
        if mask & _WRITE:
            self._flush(conn.up)
        if mask & _READ and conn.state != "closed":
            self._read(conn.down)
        self._update(conn)

    def _fast(self, pipe: _Pipe) -> bool:
        """No fault and nothing queued: forward at once. ``False``: take the general path."""
        if pipe.queue or pipe.discard or pipe.eof:
            return False
        conn = pipe.conn
        src, dst = pipe.src, pipe.dst
        assert src is not None and dst is not None
        try:
            data = src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            self._event(conn, pipe.direction, pipe.offset, f"peer error: {exc}", None)
            self._abort(conn, "reset", None)
            return True
        n = len(data)
        if not n:
            pipe.eof = True
            self._push(pipe, 0.0, _FIN)
            self._flush(pipe)
            return True
        pipe.offset += n
        if pipe.direction == "upstream":
            conn.record.bytes_upstream += n
        else:
            conn.record.bytes_downstream += n
        try:
            sent = dst.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._event(conn, pipe.direction, pipe.offset, f"peer error: {exc}", None)
            self._abort(conn, "reset", None)
            return True
        if sent < n:
            self._push(pipe, 0.0, memoryview(data)[sent:])
            pipe.write_blocked = True
            self._update(conn)
        return True

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
                        self._later(at, lambda: self._timer(pipe))
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
        for sock in (conn.client, conn.server):
            if sock is None:
                continue
            if self._selector is not None and conn.events.get(sock.fileno()):
                self._selector.unregister(sock)
            if rst:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
                except OSError:
                    pass
            sock.close()
        conn.events.clear()
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


def _fmt(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _resolve_target(target: Any) -> tuple[socket.AddressFamily, Any]:
    address = getattr(target, "address", target)
    if isinstance(address, str):
        return socket.AF_UNIX, address
    if (
        isinstance(address, tuple)
        and len(address) >= 2
        and isinstance(address[0], str)
        and isinstance(address[1], int)
        and not isinstance(address[1], bool)
    ):
        host, port = address[0], address[1]
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
