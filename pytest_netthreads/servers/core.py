"""The threaded server core: :class:`ThreadedServer` and what it records.

A server is a listening socket registered with the process-wide reactor (see
``_runtime/reactor.py``); it owns no thread of its own until a client connects. Each accepted
connection is then served in one of three ways, chosen by ``concurrency``:

``"thread"``  (default) a new daemon thread per connection runs ``handler(conn)``;
``"pool"``    a bounded :class:`concurrent.futures.ThreadPoolExecutor` runs it, so at most
              ``max_workers`` connections are served at once and the rest wait their turn;
``"selector"`` the handler's non-blocking implementation runs inside the reactor itself
              (only the reference handlers that have one: echo, sink, blackhole, close, reset).
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from .._runtime import values as _values
from .._runtime.reactor import (
    EVENT_READ,
    AcceptBackoff,
    Reactor,
    ReactorDied,
    acquire_reactor,
    get_reactor,
    is_retryable_accept_error,
    readable_now,
)
from .._runtime.stacks import format_thread_stack
from .._runtime.threads import note_created
from .._runtime.values import format_address, resolve_host
from .records import (
    Address,
    ConnectionRecord,
    Handler,
    HandlerError,
    HowClosed,
    ServerConnection,
    ServerError,
    ServerStopTimeout,
    TLSHandshakeFailed,
)

if TYPE_CHECKING:
    import ssl

    from typing_extensions import Self

Concurrency = Literal["thread", "pool", "selector"]
_CONCURRENCY = ("thread", "pool", "selector")
_MAX_BACKLOG = 2**31 - 1  # listen() takes a C int; the kernel caps it at somaxconn anyway
# Linux creates the socket non-blocking (one system call fewer than setblocking(False)).
_NONBLOCKING_STREAM = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)

_DISCONNECTS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

# What a handler may see because stop() shut its socket down under it: not the handler's bug.
_STOP_ERRNOS = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED}
)
# How much longer than the stopping thread's own deadline a concurrent stop() waits for it.
_STOP_WAIT_MARGIN = 10.0


class NativeConnection:
    """A connection served inside the reactor on a non-blocking socket.

    Subclasses implement :meth:`on_event`; they run with the reactor lock held and must never
    block. The reference handlers use this for ``concurrency="selector"``.
    """

    closed: bool = False
    initial_events: ClassVar[int] = EVENT_READ

    def __init__(self, server: ThreadedServer, sock: socket.socket, record: ConnectionRecord):
        self.server = server
        self.sock = sock
        self.record = record
        self.reactor = server._reactor

    def start(self) -> None:
        """Called once, with the reactor lock held, right after accept."""
        if self.initial_events:
            self.reactor.register_locked(self.sock, self.initial_events, self)

    def on_event(self, mask: int) -> None:
        raise NotImplementedError

    def on_reactor_error(self, exc: BaseException) -> None:
        self.server._record_error(self.record, exc)
        self.close("error")

    def close(self, how: HowClosed) -> None:
        """Unregister and close (reactor lock held)."""
        if self.closed:
            return
        self.closed = True
        self.reactor.unregister_locked(self.sock)
        self.server._finish(self.record, how, self.sock)  # the record first, then the close


_H = TypeVar("_H", bound=Callable[..., object])


def native(implementation: type[NativeConnection]) -> Callable[[_H], _H]:
    """Give a blocking handler a non-blocking twin for ``concurrency="selector"``.

    ``@native(MyNativeConnection)`` above ``def handler(conn): ...``: the server runs the
    handler in a worker thread, or ``MyNativeConnection`` inside the event loop with the
    selector model. The reference handlers echo, sink, blackhole, close and reset have one.
    """
    if not (isinstance(implementation, type) and issubclass(implementation, NativeConnection)):
        raise TypeError(f"native() takes a NativeConnection subclass, got {implementation!r}")

    def attach(handler: _H) -> _H:
        handler.native = implementation  # type: ignore[attr-defined]
        return handler

    return attach


def native_of(handler: object) -> type[NativeConnection] | None:
    """The handler's non-blocking implementation (see :func:`native`), or ``None``."""
    implementation = getattr(handler, "native", None)
    if isinstance(implementation, type) and issubclass(implementation, NativeConnection):
        return implementation
    return None


class _Listener:
    """The reactor's view of a server's listening socket.

    ``server`` is cleared once the server stopped (the socket unregistered, every timer
    cancelled): a stopped server is then freed by reference counting, not by the garbage
    collector, which the server and its listener referring to each other would need.
    """

    closed = False

    def __init__(self, server: ThreadedServer) -> None:
        self.server: ThreadedServer | None = server

    def on_event(self, mask: int) -> None:
        server = self.server
        if server is not None:
            server._accept_ready()

    def on_reactor_error(self, exc: BaseException) -> None:
        # The reactor has unregistered the socket: record, then listen again after a pause
        # (unless the loop itself died: its error is the server's last).
        server = self.server
        if server is None:  # stopped: nothing is registered or scheduled any more
            return
        server._record_error(None, exc)
        if not isinstance(exc, ReactorDied):
            server._pause_accepting(None)


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _caused_by_stop(exc: BaseException) -> bool:
    """Whether ``exc`` is what a socket operation raises once stop() shut the socket down."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in _STOP_ERRNOS:
        return True
    ssl = sys.modules.get("ssl")  # loaded if the connection uses TLS
    return ssl is not None and isinstance(exc, ssl.SSLError)


def _handler_name(handler: object) -> str:
    name = getattr(handler, "__name__", None) or type(handler).__name__
    return str(name)


class ThreadedServer:
    """A TCP (or Unix domain) server for tests, usable with or without pytest.

    ``with ThreadedServer(handlers.echo) as srv:`` starts it; it is listening when the
    ``with`` body begins (port 0 is bound and read back, nothing sleeps or polls) and it
    stops when the block ends, raising any handler error.

    Args:
        handler: called as ``handler(conn)`` once per accepted connection, ``conn`` a
            :class:`ServerConnection` (a socket). The server closes ``conn`` when it returns.
        host: the address to bind, loopback by default; ``"::1"`` for IPv6.
        port: the port to bind; 0 (the default) picks a free one.
        unix: ``True`` for a Unix domain socket in a fresh temporary directory, or a path.
            ``host`` and ``port`` are then unused.
        ssl_context: a server :class:`ssl.SSLContext`; each connection is wrapped and its
            handshake runs in the connection's worker thread.
        concurrency: ``"thread"``, ``"pool"`` or ``"selector"`` (see the module docs).
        max_workers: the pool size for ``concurrency="pool"`` (default 8).
        backlog: the listen backlog (the kernel caps it at ``somaxconn``).
        stop_timeout: seconds :meth:`stop` waits for handlers before it reports them.
        tls_handshake_timeout: with ``ssl_context``, seconds a client has to complete the
            TLS handshake (default 10); a client that does not is recorded as a failed
            handshake.
        ignore_disconnects: a handler that fails with ``ConnectionResetError``,
            ``BrokenPipeError`` or ``ConnectionAbortedError`` (the client vanished) records
            ``how_closed="peer-reset"`` instead of failing the test. Default ``True``.
        name: a name for reports and thread names (default: the handler's name and port).
    """

    def __init__(
        self,
        handler: Handler | Callable[[Any], object],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unix: bool | str | os.PathLike[str] = False,
        ssl_context: ssl.SSLContext | None = None,
        concurrency: Concurrency = "thread",
        max_workers: int | None = None,
        backlog: int = 4096,
        stop_timeout: float = 5.0,
        tls_handshake_timeout: float = 10.0,
        ignore_disconnects: bool = True,
        name: str | None = None,
    ) -> None:
        if not callable(handler):
            raise TypeError(
                f"handler must be a callable taking the connection socket, got {handler!r}"
            )
        if type(port) is not int or not 0 <= port <= 65535:  # fast path: a plain int in range
            if isinstance(port, bool) or not isinstance(port, int):
                raise TypeError(f"port must be an int from 0 to 65535, got {port!r}")
            if not 0 <= port <= 65535:
                raise ValueError(f"port must be from 0 to 65535, got {port}")
        if concurrency not in _CONCURRENCY:
            raise ValueError(f"concurrency must be one of {_CONCURRENCY}, got {concurrency!r}")
        if concurrency == "selector" and native_of(handler) is None:
            raise ValueError(
                f"concurrency='selector' needs a handler with a non-blocking implementation "
                f"(echo, sink, blackhole, close, reset); {_handler_name(handler)} has none"
            )
        if concurrency == "selector" and ssl_context is not None:
            raise ValueError(
                "concurrency='selector' cannot be used with ssl_context: TLS handshakes run "
                "in worker threads; use concurrency='thread' or 'pool'"
            )
        if max_workers is not None:
            if concurrency != "pool":
                raise ValueError("max_workers is only used with concurrency='pool'")
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be a positive int, got {max_workers!r}")
            if max_workers < 1:
                raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        if type(backlog) is not int or not 1 <= backlog <= _MAX_BACKLOG:
            if isinstance(backlog, bool) or not isinstance(backlog, int):
                raise TypeError(
                    f"backlog must be an int from 1 to {_MAX_BACKLOG}, got {backlog!r}"
                )
            if not 1 <= backlog <= _MAX_BACKLOG:
                raise ValueError(f"backlog must be from 1 to {_MAX_BACKLOG}, got {backlog}")
        stop_timeout = _values.seconds(stop_timeout, "stop_timeout")
        tls_handshake_timeout = _values.seconds(
            tls_handshake_timeout, "tls_handshake_timeout", positive=True
        )
        if ignore_disconnects is not True and ignore_disconnects is not False:
            raise TypeError(f"ignore_disconnects must be a bool, got {ignore_disconnects!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str or None, got {name!r}")
        if ssl_context is not None:
            # The ssl module is loaded if the caller has an SSLContext; not imported otherwise.
            _ssl = sys.modules.get("ssl")
            if _ssl is None or not isinstance(ssl_context, _ssl.SSLContext):
                raise TypeError(f"ssl_context must be an ssl.SSLContext, got {ssl_context!r}")

        self.handler = handler
        self.ssl_context = ssl_context
        self.concurrency: Concurrency = concurrency
        self.max_workers = max_workers or 8
        self.backlog = backlog
        self.stop_timeout = float(stop_timeout)
        self.tls_handshake_timeout = float(tls_handshake_timeout)
        self.ignore_disconnects = ignore_disconnects
        self._unix_path: str | None = None
        self._unix_tmpdir: str | None = None
        if unix is not False:
            if unix is True:
                self._family = socket.AF_UNIX
            elif isinstance(unix, (str, os.PathLike)):
                self._family = socket.AF_UNIX
                self._unix_path = _values.unix_path(unix, "unix")
            else:
                raise TypeError(f"unix must be True or a socket path, got {unix!r}")
            self._bind_host = ""
        elif host == "127.0.0.1":  # the default: no look-up
            self._family, self._bind_host = socket.AF_INET, host
        else:
            self._family, self._bind_host = resolve_host(host, port)
        self._bind_port = port
        self._name = name
        self._reactor: Reactor = get_reactor()  # the live loop's, again at start()
        self._sock: socket.socket | None = None
        self._listener = _Listener(self)
        self._address: Address | None = None
        self._state = "new"
        self._lock = threading.Lock()
        # Made on first use: most fixture servers never see a waiter or a worker, and these
        # two are a large part of the cost of a server that nobody connects to.
        self._changed_cond: threading.Condition | None = None
        self._stop_event: threading.Event | None = None
        self._stop_flag = False
        self._records: list[ConnectionRecord] = []
        # record -> [the socket (or native connection) serving it, its thread or future]
        self._live: dict[ConnectionRecord, list[Any]] = {}
        # Records marked closed whose socket is not closed yet (see _finish): not counted
        # by wait_for_connections(closed=True) until it is.
        self._closing: set[ConnectionRecord] = set()
        self._threads: list[threading.Thread] = []
        self._errors: list[tuple[ConnectionRecord | None, BaseException, str]] = []
        self._reported = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_threads: list[threading.Thread] = []
        self._backoff: AcceptBackoff | None = None  # made when accept() first fails
        self._stop_done: threading.Event | None = None  # made for a concurrent stop() only
        self._stop_deadline = 0.0
        self._stop_error: BaseException | None = None
        note_created(self)  # its threads start later, from the reactor: say who created it

    @property
    def _changed(self) -> threading.Condition:
        """Notified (under ``_lock``) whenever a connection opens or closes."""
        cond = self._changed_cond
        if cond is None:
            # Creating it needs no lock: it only wraps ``_lock``; a race makes two equal ones,
            # so the first one stored wins.
            cond = threading.Condition(self._lock)
            with self._lock:
                if self._changed_cond is None:
                    self._changed_cond = cond
                cond = self._changed_cond
        return cond

    @property
    def _stopping(self) -> threading.Event:
        """Set when :meth:`stop` begins (``conn.stopping`` for handlers)."""
        event = self._stop_event
        if event is None:
            new = threading.Event()
            with self._lock:
                if self._stop_event is None:
                    if self._stop_flag:
                        new.set()
                    self._stop_event = new
                event = self._stop_event
        return event

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Bind, listen and register with the reactor. Returns ``self``.

        Raises:
            RuntimeError: the server was started before (servers are not restartable).
            OSError: the address cannot be bound (the message names it).
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"server {self.name} was already started; create a new one")
            self._state = "starting"
        try:
            self._reactor = acquire_reactor()
            sock = socket.socket(self._family, _NONBLOCKING_STREAM)
        except BaseException:
            self._state = "stopped"
            raise
        try:
            if self._family == socket.AF_UNIX:
                if self._unix_path is None:
                    self._unix_tmpdir = tempfile.mkdtemp(prefix="netthreads-")
                    self._unix_path = _values.unix_path(
                        os.path.join(self._unix_tmpdir, "server.sock"),
                        "the socket path in the temporary directory (set TMPDIR shorter)",
                    )
                bind_to: Any = self._unix_path
            else:
                if self._bind_port:  # a fixed port may be rebound while old ones linger
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                bind_to = (self._bind_host, self._bind_port)
            try:
                sock.bind(bind_to)
            except OSError as exc:
                what = format_address(bind_to)
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(
                        exc.errno, f"cannot listen on {what}: address already in use"
                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise OSError(
                        exc.errno, f"cannot listen on {what}: not an address of this machine"
                    ) from None
                raise OSError(exc.errno, f"cannot listen on {what}: {exc.strerror}") from None
            sock.listen(self.backlog)
            if _NONBLOCKING_STREAM == socket.SOCK_STREAM:  # no SOCK_NONBLOCK here
                sock.setblocking(False)
            if self._family == socket.AF_UNIX:
                self._address = self._unix_path or ""
            else:
                self._address = tuple(sock.getsockname()[:2])
            self._sock = sock
            if self.concurrency == "pool":
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.max_workers,
                    thread_name_prefix=f"netthreads[{self.name}]-pool",
                    initializer=self._pool_initializer,
                )
            self._reactor.register(sock, EVENT_READ, self._listener)
        except BaseException:
            sock.close()
            self._remove_unix_path()
            self._state = "stopped"
            raise
        self._state = "started"
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, serve what was accepted, shut down connections, join the workers.

        Bounded even when clients stay connected and handlers are blocked in ``recv``:
        connections still waiting in the listen backlog are accepted, the listener is closed,
        every connection is shut down (a blocked ``recv`` returns what the client had sent,
        then ``b""``), ``conn.stopping`` is set, and workers are joined with ``timeout``
        (default ``stop_timeout``). A connection accepted before the stop gets its handler
        run, even if it had not started yet, so no handler error is lost; one whose handler
        could not start in time is recorded ``how_closed="unserved"`` and reported.

        Threads that call it while another thread is stopping the server wait for that stop
        to end and raise the same error; a call after the server stopped does nothing.

        Raises:
            HandlerError: a handler raised (each server-side traceback is in the message).
            ServerStopTimeout: a worker did not finish in time (named, with its stack).
        """
        timeout = self.stop_timeout if timeout is None else _values.seconds(timeout, "timeout")
        with self._lock:
            state = self._state
            if state in ("new", "stopped"):
                self._state = "stopped"
                return
            if state == "stopping":
                current = threading.current_thread()
                if current in self._threads or current in self._pool_threads:
                    return  # a handler of this server: the stopping thread is joining it
                done = self._stop_done
                if done is None:
                    done = self._stop_done = threading.Event()
                wait = max(0.0, self._stop_deadline - time.monotonic()) + _STOP_WAIT_MARGIN
            else:
                done = None
                wait = 0.0
                self._state = "stopping"
                self._stop_flag = True
                self._stop_deadline = time.monotonic() + timeout
                if self._stop_event is not None:
                    self._stop_event.set()
        if done is not None:
            if not done.wait(wait):
                raise ServerStopTimeout(
                    self.name,
                    f"server {self.name}: another thread's stop() did not end in {wait:g}s",
                    [],
                )
            if self._stop_error is not None:
                raise self._stop_error
            return
        error: BaseException | None = None
        try:
            self._stop(timeout)
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._lock:
                self._state = "stopped"
                self._stop_error = error
                if self._stop_done is not None:
                    self._stop_done.set()

    def _stop(self, timeout: float) -> None:
        deadline = self._stop_deadline
        reactor = self._reactor
        sock = self._sock
        listener = self._listener
        with reactor.lock:
            listener.closed = True
            backoff = self._backoff
            if backoff is not None:
                backoff.cancel()
            if sock is not None:
                # Connections the kernel accepted for us (the client's connect() returned,
                # its data may be on the way) are served, not reset by the close.
                if readable_now(sock):
                    self._accept_ready(draining=True)
                reactor.unregister_locked(sock)
                sock.close()
            # Unregistered under the reactor's lock: no connection can be accepted now, and
            # the listener is called no more.
            listener.server = None
            with self._lock:
                entries = self._live
                idle = not (entries or self._threads or self._pool_threads)
                natives = (
                    [c for c, _ in entries.values() if isinstance(c, NativeConnection)]
                    if entries
                    else ()
                )
            for native in natives:
                native.close("server-stop")
        if idle and self._executor is None:
            # Nothing to shut down or join (the common case of a fixture server).
            if self._unix_path is not None or self._unix_tmpdir is not None:
                self._remove_unix_path()
            if self._errors or self._backoff is not None:
                self._raise_errors()
            return
        with self._lock:
            live = [(record, list(entry)) for record, entry in self._live.items()]
        for _, (conn, _) in live:
            if isinstance(conn, socket.socket):
                try:
                    # The base-class shutdown: SSLSocket.shutdown would drop its SSL object
                    # under the worker thread that is using it. What the client sent stays
                    # readable; then recv() returns b"".
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)
                except OSError:
                    pass
        executor = self._executor
        if executor is not None:
            # Queued connections are not cancelled: their handlers run once the running
            # ones return (which the shutdown above makes them do).
            executor.shutdown(wait=False)
        current = threading.current_thread()
        with self._lock:
            threads = list(self._threads) + list(self._pool_threads)
        if executor is not None:
            # A pool thread may not have run its initializer (which lists it) yet.
            pool = getattr(executor, "_threads", ())
            threads += [t for t in list(pool) if t not in threads]
        for thread in threads:
            if thread is not current:  # stop() called from a handler: do not join itself
                thread.join(max(0.0, deadline - time.monotonic()))
        unserved: list[ConnectionRecord] = []
        if executor is not None:
            with self._lock:
                queued = [
                    (record, entry[0], entry[1])
                    for record, entry in self._live.items()
                    if isinstance(entry[1], concurrent.futures.Future)
                ]
            for record, conn, future in queued:
                if future.cancel():  # still queued after the timeout: never served
                    self._finish(record, "unserved", conn)
                    unserved.append(record)
        stuck = [t for t in threads if t.is_alive() and t is not current]
        if executor is not None and not stuck:
            # Its workers are gone; its initializer (a method of this server) referred back.
            self._executor = None
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
        self._remove_unix_path()
        report = ""
        if stuck or unserved:
            report = self._stuck_report(stuck, unserved, timeout)
        self._raise_errors(extra=report)
        if stuck or unserved:
            raise ServerStopTimeout(self.name, report, stuck, unserved)

    def check(self) -> None:
        """Raise :class:`HandlerError` now for handler errors not raised before."""
        # Without the lock first (called after every test that owns a server): an error
        # recorded while this runs is one that came just after the check.
        if len(self._errors) != self._reported or self._backoff is not None:
            self._raise_errors()

    def _raise_errors(self, extra: str = "") -> None:
        with self._lock:
            self._note_accept_failures()
            new = self._errors[self._reported :]
            self._reported = len(self._errors)
        if new:
            raise HandlerError(self.name, new, extra)

    def _stuck_report(
        self, stuck: list[threading.Thread], unserved: list[ConnectionRecord], timeout: float
    ) -> str:
        parts = []
        if stuck:
            parts.append(
                f"server {self.name}: {len(stuck)} worker thread(s) still running "
                f"{timeout:g}s after stop() (left running as daemon threads):"
            )
        for thread in stuck:
            stack = format_thread_stack(thread)
            parts.append(f"--- thread {thread.name!r}, current stack:\n{stack}")
        if unserved:
            which = ", ".join(f"#{r.index} from {format_address(r.peer)}" for r in unserved)
            parts.append(
                f"server {self.name}: {len(unserved)} accepted connection(s) dropped unserved "
                f"(their handler had not started {timeout:g}s after stop()): {which}"
            )
        return "\n".join(parts)

    def _remove_unix_path(self) -> None:
        if self._unix_path is not None and self._sock is not None:
            try:
                os.unlink(self._unix_path)
            except OSError:
                pass
        if self._unix_tmpdir is not None:
            shutil.rmtree(self._unix_tmpdir, ignore_errors=True)
            self._unix_tmpdir = None

    # -- addresses and records ---------------------------------------------------------

    @property
    def name(self) -> str:
        if self._name is None:
            where = format_address(self._address) if self._address is not None else "unbound"
            return f"{_handler_name(self.handler)}@{where}"
        return self._name

    @property
    def address(self) -> Address:
        """``(host, port)`` (what :func:`socket.create_connection` takes), or the Unix path."""
        if self._address is None:
            raise RuntimeError(f"server {self.name} has no address until start()")
        return self._address

    @property
    def host(self) -> str:
        address = self.address
        if isinstance(address, str):
            raise AttributeError("a Unix domain server has no host; use .address (the path)")
        return address[0]

    @property
    def port(self) -> int:
        address = self.address
        if isinstance(address, str):
            raise AttributeError("a Unix domain server has no port; use .address (the path)")
        return address[1]

    @property
    def family(self) -> socket.AddressFamily:
        return self._family

    @property
    def url(self) -> str:
        """``http://host:port`` (``https`` with TLS), for HTTP clients."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{format_address(self.address)}"

    @property
    def running(self) -> bool:
        return self._state == "started"

    @property
    def connections(self) -> list[ConnectionRecord]:
        """A snapshot of every connection's record, in accept order."""
        with self._lock:
            return list(self._records)

    @property
    def errors(self) -> list[BaseException]:
        """Every handler error so far (raised or not yet raised)."""
        with self._lock:
            self._note_accept_failures()
            return [exc for _, exc, _ in self._errors]

    def _note_accept_failures(self) -> None:
        """Record accept() failures counted since the last report as one error (lock held)."""
        backoff = self._backoff
        if backoff is not None:
            taken = backoff.take_report()
            if taken is not None:
                self._errors.append((None, *taken))

    def wait_for_connections(
        self, count: int = 1, *, closed: bool = False, timeout: float = 10.0
    ) -> list[ConnectionRecord]:
        """Block until ``count`` connections were accepted (or closed, with ``closed=True``:
        the server's side of each closed, the socket and the record).

        Returns the records (a snapshot). Raises :class:`TimeoutError` naming what was
        awaited and what was seen when ``timeout`` passes first.
        """
        count, timeout = _values.wait_arguments(count, timeout)
        closing = self._closing

        def ready() -> bool:
            # A closed record counts once its socket is closed too: the record says so first
            # (a client that saw the close finds it closed), the socket closes just after.
            if closed:
                n = sum(1 for r in self._records if r.closed and r not in closing)
            else:
                n = len(self._records)
            return n >= count

        changed = self._changed
        with changed:
            if not changed.wait_for(ready, timeout):
                seen = sum(1 for r in self._records if r.closed)
                raise TimeoutError(
                    f"server {self.name}: waited {timeout:g}s for {count} "
                    f"{'closed ' if closed else ''}connection(s); saw {len(self._records)} "
                    f"accepted, {seen} closed"
                )
            return list(self._records)

    # -- reactor side ------------------------------------------------------------------

    def _accept_ready(self, draining: bool = False) -> None:
        """Accept what is pending (reactor thread or ``stop()``, reactor lock held)."""
        sock = self._sock
        if sock is None or (self._listener.closed and not draining):
            return
        # A burst is bounded so that one busy server cannot starve the others; stop()
        # drains the whole backlog.
        for _ in range(1 << 30 if draining else 64):
            try:
                fd, peer = sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if is_retryable_accept_error(exc):
                    continue  # that client's connection failed; the next may be fine
                if not draining:
                    self._pause_accepting(exc)
                return
            if self._backoff is not None:
                self._backoff.succeeded()
            self._serve(fd, peer)

    def _pause_accepting(self, exc: OSError | None) -> None:
        """accept() failed (descriptors exhausted, say): stop listening for a while.

        The listening socket stays readable, so trying again at once would spin. The
        failures are counted and reported once (:meth:`_raise_errors`), not one per try.
        """
        backoff = self._backoff
        if backoff is None:
            backoff = self._backoff = AcceptBackoff(f"server {self.name}")
        sock = self._sock
        if sock is None or self._listener.closed:
            return
        self._reactor.unregister_locked(sock)
        if exc is not None:
            backoff.failed(exc)
        backoff.schedule(self._reactor, self._resume_accepting, self._listener.on_reactor_error)

    def _resume_accepting(self) -> None:
        sock = self._sock
        if sock is None or self._listener.closed:
            return
        self._reactor.register_locked(sock, EVENT_READ, self._listener)
        self._accept_ready()

    def _serve(self, fd: int, peer: Any) -> None:
        selector = self.concurrency == "selector"
        try:
            sock = (socket.socket if selector else ServerConnection)(
                self._family, socket.SOCK_STREAM, 0, fileno=fd
            )
        except BaseException:
            _close_fd(fd)
            raise
        with self._lock:
            record = ConnectionRecord(
                index=len(self._records),
                peer=tuple(peer[:2]) if isinstance(peer, tuple) else (peer or ""),
                opened_at=time.time(),
            )
            self._records.append(record)
            if self._changed_cond is not None:
                self._changed_cond.notify_all()
        try:
            self._hand_on(sock, record)
        except BaseException as exc:  # this connection's failure, not the listener's
            self._record_error(record, exc)
            self._finish(record, "error", sock)

    def _hand_on(self, sock: socket.socket, record: ConnectionRecord) -> None:
        """Start serving an accepted connection (reactor lock held)."""
        if self.concurrency == "selector":
            sock.setblocking(False)
            implementation = native_of(self.handler)
            assert implementation is not None  # checked in __init__
            native = implementation(self, sock, record)
            with self._lock:
                self._live[record] = [native, None]
            try:
                native.start()
            except BaseException as exc:
                native.on_reactor_error(exc)
            return
        assert isinstance(sock, ServerConnection)
        conn = sock
        conn.setblocking(True)
        conn.record = record
        conn.stopping = self._stopping
        conn.server = self
        if self._executor is not None:
            try:
                future = self._executor.submit(self._serve_connection, conn)
            except RuntimeError as exc:  # shut down under us
                self._record_error(record, exc)
                self._finish(record, "error", conn)
                return
            with self._lock:
                if record.closed_at is None:
                    self._live[record] = [conn, future]
            return
        thread = threading.Thread(
            target=self._serve_connection,
            args=(conn,),
            name=f"netthreads[{self.name}]#{record.index}",
            daemon=True,
        )
        with self._lock:
            self._live[record] = [conn, thread]
            self._threads.append(thread)
        try:
            thread.start()
        except RuntimeError as exc:  # can't start new thread
            with self._lock:
                self._threads.remove(thread)
            self._record_error(record, exc)
            self._finish(record, "error", conn)

    def _pool_initializer(self) -> None:
        with self._lock:
            self._pool_threads.append(threading.current_thread())

    # -- worker side -------------------------------------------------------------------

    def _serve_connection(self, conn: ServerConnection) -> None:
        record = conn.record
        record.thread_name = threading.current_thread().name
        how: HowClosed | None = None
        try:
            # Started after stop() began, too: the handler runs on what the client sent.
            conn = self._prepare(conn)
            self.handler(conn)
        except BaseException as exc:
            how = self._classify(record, exc)
        finally:
            self._finish(record, how, conn)

    def _prepare(self, conn: ServerConnection) -> ServerConnection:
        """Wrap ``conn`` in TLS and run the handshake, in the worker thread.

        The TLS layer calls :meth:`_replace_socket` so that :meth:`stop` shuts down the
        socket the worker is really using, and raises :class:`TLSHandshakeFailed` when the
        handshake fails.
        """
        if self.ssl_context is None:
            return conn
        from .tls_accept import accept_tls  # keeps ssl off the import path of plain servers

        record = conn.record
        return accept_tls(
            conn,
            self.ssl_context,
            self.tls_handshake_timeout,
            on_wrapped=lambda wrapped: self._replace_socket(record, wrapped),
        )

    def _replace_socket(self, record: ConnectionRecord, sock: socket.socket) -> None:
        with self._lock:
            entry = self._live.get(record)
            if entry is not None:
                entry[0] = sock

    def _classify(self, record: ConnectionRecord, exc: BaseException) -> HowClosed:
        if isinstance(exc, TLSHandshakeFailed):
            record.error = str(exc)
            return "handshake-failed"
        if self._stop_flag and _caused_by_stop(exc):
            # The server shut the connection down under the handler: not the handler's bug.
            return "server-stop"
        if self.ignore_disconnects and isinstance(exc, _DISCONNECTS):
            return "peer-reset"
        self._record_error(record, exc)
        return "error"

    def _record_error(self, record: ConnectionRecord | None, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if record is not None:
            record.error = text
        with self._lock:
            self._errors.append((record, exc, text))

    def _finish(
        self, record: ConnectionRecord, how: HowClosed | None, sock: socket.socket
    ) -> None:
        """Close ``sock``, the connection's: the record first (how and when it closed), so a
        client that saw the close finds the record closed; then the bookkeeping."""
        first = self._mark_closed(record, how)
        try:
            sock.close()
        finally:
            if first:
                self._forget(record)

    def _mark_closed(self, record: ConnectionRecord, how: HowClosed | None) -> bool:
        """Set ``how_closed`` and ``closed_at``; ``False`` when the record was closed before."""
        with self._lock:
            if record.closed_at is not None:
                return False
            if how is None:
                how = record.how_closed  # a handler may have said how it closed
            if how is None:
                if self._stop_flag:
                    how = "server-stop"
                else:
                    how = "peer-eof" if record.saw_eof else "handler"
            record.how_closed = how
            record.closed_at = time.time()
            self._closing.add(record)
            return True

    def _forget(self, record: ConnectionRecord) -> None:
        """The closed connection is no longer served: not live, its thread done."""
        with self._lock:
            self._live.pop(record, None)
            self._closing.discard(record)
            current = threading.current_thread()
            if current in self._threads:
                self._threads.remove(current)
            if self._changed_cond is not None:
                self._changed_cond.notify_all()

    def __repr__(self) -> str:
        return f"<ThreadedServer {self.name} {self._state} concurrency={self.concurrency}>"


def stop_all(servers: Iterable[ThreadedServer], timeout: float | None = None) -> None:
    """Stop every server, then raise the first error (with the others' messages appended)."""
    errors: list[ServerError] = []
    for server in servers:
        try:
            server.stop(timeout)
        except ServerError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ServerError("\n\n".join(str(e) for e in errors))


__all__ = [
    "Address",
    "ConnectionRecord",
    "HandlerError",
    "HowClosed",
    "NativeConnection",
    "ServerConnection",
    "ServerError",
    "ServerStopTimeout",
    "TLSHandshakeFailed",
    "ThreadedServer",
    "native",
    "native_of",
    "stop_all",
]
