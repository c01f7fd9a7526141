"""FaultProxy: a TCP proxy that applies faults, inside the test process.

Design: every socket of the proxy is non-blocking and registered with the kit's process-wide
event loop (``_runtime/reactor.py``, the loop the servers use too), and every callback runs
under that loop's lock, so a fault can act on any connection at any moment without racing a
blocked ``recv`` (a reset is a ``SO_LINGER`` 0 close). Sharing the loop with the servers is
what makes the proxy cheap in front of an in-process server: forwarding a request to
``echo_server`` and the echo back wakes no other thread, so a round trip through the proxy
costs the same two thread wake-ups as a direct one (``docs/faults.rst``, Performance).

This module holds the public side (the proxy's API, its records and its listener); each
connection's state machine and data path are in ``_connection.py``, and what each kind of
fault does is in ``_behaviour.py``.

Changes made from other threads (``add``, ``remove``, ``down``...) run under the loop's lock
before they return, so when ``proxy.add(ResetPeer())`` returns the live connections are
reset.
"""

from __future__ import annotations

import itertools
import random
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .._runtime import values as _values
from .._runtime.reactor import (
    EVENT_READ,
    AcceptBackoff,
    Reactor,
    ReactorDied,
    Timer,
    acquire_reactor,
    is_retryable_accept_error,
)
from .._runtime.stacks import format_thread_stack
from .._runtime.values import format_address
from ._behaviour import behaviour_of
from ._connection import Connection, FaultEntry, nodelay
from .framing import Framing
from .hold import MessageHold
from .specs import ProxyFault

if TYPE_CHECKING:
    from typing_extensions import Self

_T = TypeVar("_T")


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
        time: ``time.monotonic()`` when it happened (not compared: two runs with one seed
            give equal logs, ``proxy.log == other.log``, whatever their timing).
        detail: what the fault drew or did, for replay checks: ``"drew 0.1375 <
            probability 0.5"``, ``"delay 0.0513s"``, ``"sizes 3,1,4"``,
            ``"0x41->0xbe"``...; ``""`` if nothing.
    """

    connection: int
    direction: str
    offset: int
    action: str
    fault: ProxyFault | None
    time: float = field(compare=False)
    detail: str = ""

    def __str__(self) -> str:
        what = f" {self.fault!r}" if self.fault is not None else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"#{self.connection} {self.direction} @{self.offset}: {self.action}{detail}{what}"


ProxyHowClosed = Literal["eof", "reset", "fault-reset", "connect-failed", "proxy-stop", "error"]
"""How a connection through a :class:`FaultProxy` ended (:attr:`ProxyConnection.how_closed`).

``eof``: both sides closed (a FIN each way); ``reset``: a peer reset the connection (or
failed), and the proxy reset the other side; ``fault-reset``: the proxy reset both sides
(:class:`~pytest_netthreads.faults.ResetPeer`, or ``down(reset_connections=True)``);
``connect-failed``: the target could not be dialed; ``proxy-stop``: :meth:`FaultProxy.stop`
closed it; ``error``: an exception in the proxy's callbacks (raised by ``stop()``).
A server's records use their own words (:data:`pytest_netthreads.servers.records.HowClosed`:
``peer-eof``, ``peer-reset``, ``server-stop``...): they say what the server saw, these what
the proxy did.
"""


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
    how_closed: ProxyHowClosed | None = None
    """See :data:`ProxyHowClosed`; ``None`` while open."""

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


class ProxyFaultHandle:
    """What :meth:`FaultProxy.add` returns: removes the faults it added, by hand
    (:meth:`remove`) or at the end of a ``with`` block."""

    def __init__(self, proxy: FaultProxy, ids: list[int]) -> None:
        self._proxy = proxy
        self._ids = ids

    def remove(self) -> None:
        """Remove the faults (those still active; idempotent)."""
        self._proxy._remove_ids(self._ids)

    def __enter__(self) -> ProxyFaultHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


class _Listener:
    """The proxy's listening socket on the loop (an ``EventTarget``): accepts connections."""

    __slots__ = ("address", "closed", "proxy", "sock")

    def __init__(self, proxy: FaultProxy, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                where = format_address((host, port))
                raise OSError(
                    exc.errno, f"fault proxy cannot listen on {where}: {exc.strerror}"
                ) from None
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.address: tuple[str, int] = tuple(sock.getsockname()[:2])
        self.closed = False
        self.proxy = proxy
        self.sock = sock
        assert proxy._reactor is not None
        proxy._reactor.register_locked(sock, EVENT_READ, self)

    def close(self) -> None:
        self.closed = True
        reactor = self.proxy._reactor
        if reactor is not None:
            reactor.unregister_locked(self.sock)
        self.sock.close()

    def on_event(self, mask: int) -> None:
        self.accept()

    def on_reactor_error(self, exc: BaseException) -> None:
        # The reactor has unregistered the socket: record, then listen again after a pause.
        self.proxy._record_error(None, exc)
        if not isinstance(exc, ReactorDied) and not self.closed:
            self.pause(None)

    def accept(self) -> None:
        if self.closed:
            return
        proxy = self.proxy
        listener = self.sock
        for _ in range(64):
            try:
                fd, peer = listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if is_retryable_accept_error(exc):
                    continue
                self.pause(exc)
                return
            if proxy._backoff is not None:
                proxy._backoff.succeeded()
            client = socket.socket(listener.family, socket.SOCK_STREAM, 0, fileno=fd)
            client.setblocking(False)
            nodelay(client)
            with proxy._lock:
                record = ProxyConnection(len(proxy._records), tuple(peer[:2]), time.time())
                proxy._records.append(record)
                proxy._changed.notify_all()
            conn = Connection(proxy, record, client)
            proxy._live[conn.index] = conn
            conn.begin()

    def pause(self, exc: OSError | None) -> None:
        """accept() failed (descriptors exhausted, say): stop listening for a while.

        The listening socket stays readable, so trying again at once would spin; the
        failures are counted and reported once, not one per try.
        """
        proxy = self.proxy
        backoff = proxy._backoff
        if backoff is None:
            backoff = proxy._backoff = AcceptBackoff(f"fault proxy {proxy.name}")
        reactor = proxy._reactor
        if self.closed or reactor is None:
            return
        reactor.unregister_locked(self.sock)
        if exc is not None:
            backoff.failed(exc)

        def resume() -> None:
            if not self.closed:
                reactor.register_locked(self.sock, EVENT_READ, self)
                self.accept()

        backoff.schedule(reactor, resume, self.on_reactor_error)


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
        name: a name for reports.
        stop_timeout: seconds :meth:`stop` waits for the event loop, if it is busy in a
            callback (the proxy has no thread of its own).
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
        self._ids = itertools.count()
        self._faults = self._entries(faults)
        self._holds: dict[str, MessageHold] = {}
        self._framings: dict[str, Framing] = {}  # per direction, while one is cut in messages
        self._triggers: dict[str, list[FaultEntry]] = {}  # per direction watched
        self._message_counts: dict[tuple[int, str], int] = {}  # nth counts, scope="proxy"
        self._quiet_triggers = False  # every fault waits for a trigger, nothing is held
        # Per direction watched: each trigger's match (Side.forward_messages).
        self._matches: dict[str, tuple[bytes | re.Pattern[bytes] | None, ...]] = {}
        self._plan_messages(self._faults, self._holds)
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
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._log: list[FaultEvent] = []
        self._records: list[ProxyConnection] = []
        self._errors: list[tuple[int | None, BaseException, str]] = []
        self._reported = 0
        self._state = "new"
        self._address: tuple[str, int] | None = None
        self._listener: _Listener | None = None
        self._reactor: Reactor | None = None
        self._view = memoryview(bytearray(0))  # the loop's receive buffer, once started
        self._timers: set[Timer] = set()
        self._live: dict[int, Connection] = {}
        # Records marked closed whose sockets are not closed yet: not counted by
        # wait_for_connections(closed=True) until they are.
        self._closing: set[ProxyConnection] = set()
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
            self._listen()
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
            return tuple(entry[1] for entry in self._faults)

    def add(self, *faults: ProxyFault) -> ProxyFaultHandle:
        """Add faults to the live proxy; they act on open connections too.

        Returns a :class:`ProxyFaultHandle`; ``with proxy.add(faults.Latency(0.1)):``
        removes them at the end of the block (``handle.remove()`` does it by hand).
        """
        entries = self._entries(faults)

        def change() -> None:
            self._plan_messages(self._faults + entries, self._holds)
            with self._lock:
                self._faults.extend(entries)
            self._faults_changed()

        self._in_loop(change)
        return ProxyFaultHandle(self, [entry[0] for entry in entries])

    def remove(self, *faults: ProxyFault) -> None:
        """Remove faults (each the first added one equal to it). ``ValueError`` if absent."""
        with self._lock:
            current = list(self._faults)
        ids: list[int] = []
        for fault in faults:
            for fid, have, _ in current:
                if fid not in ids and have == fault:
                    ids.append(fid)
                    break
            else:
                raise ValueError(f"faults: {fault!r} is not active on this proxy")
        self._remove_ids(ids)

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            ids = [entry[0] for entry in self._faults]
        self._remove_ids(ids)

    def _entries(self, faults: tuple[ProxyFault, ...]) -> list[FaultEntry]:
        """Each fault with an id and its behaviour (``TypeError`` for one it cannot apply)."""
        kinds = [behaviour_of(fault) for fault in faults]
        return [(next(self._ids), fault, kind) for fault, kind in zip(faults, kinds)]

    def _remove_ids(self, ids: list[int]) -> None:
        def change() -> None:
            with self._lock:
                self._faults = [entry for entry in self._faults if entry[0] not in ids]
            self._plan_messages(self._faults, self._holds)
            self._faults_changed()

        self._in_loop(change)

    def hold(self, direction: str, framing: Framing) -> MessageHold:
        """Hold each next message in ``direction``, on every connection, until the test
        releases it: ``hold.wait_held(2)``, then ``hold.release()``, ``hold.release(n)``,
        ``hold.drop()``, or a message's own ``release()``/``drop()``.

        Returns a :class:`~pytest_netthreads.faults.MessageHold`; it holds until its
        ``stop()`` (or the end of a ``with`` block), which releases what is still held. A
        message held on a connection keeps that connection's later bytes behind it.

        Args:
            direction: ``"upstream"`` (client to server) or ``"downstream"``.
            framing: how to cut the stream into messages (``faults.Lines()``...); message
                triggers on the same direction must use an equal framing.
        """
        if not isinstance(direction, str):
            raise TypeError(f"direction must be 'upstream' or 'downstream', got {direction!r}")
        if direction not in ("upstream", "downstream"):
            raise ValueError(f"direction must be 'upstream' or 'downstream', got {direction!r}")
        if not isinstance(framing, Framing):
            raise TypeError(
                f"framing must be a Framing (faults.Lines(), faults.RESP()...), got {framing!r}"
            )

        def in_loop(fn: Callable[[], None]) -> None:
            self._in_loop(fn)

        def on_stop(hold: MessageHold) -> None:
            def change() -> None:
                if self._holds.get(hold.direction) is hold:
                    del self._holds[hold.direction]
                self._plan_messages(self._faults, self._holds)
                self._faults_changed()

            self._in_loop(change)

        hold = MessageHold(direction, framing, in_loop, self._changed, on_stop)

        def change() -> None:
            if direction in self._holds:
                raise ValueError(
                    f"direction: the {direction} stream is already held "
                    f"({self._holds[direction]!r}); stop() it first"
                )
            holds = {**self._holds, direction: hold}
            self._plan_messages(self._faults, holds)
            self._holds = holds
            self._faults_changed()

        self._in_loop(change)
        return hold

    def _plan_messages(self, entries: list[FaultEntry], holds: dict[str, MessageHold]) -> None:
        """Which directions are cut into messages, and by which framing; which triggers watch
        each. ``ValueError`` (and no change) if two would frame a direction differently."""
        framings: dict[str, Framing] = {}
        triggers: dict[str, list[FaultEntry]] = {}

        def need(direction: str, framing: Framing, what: str) -> None:
            have = framings.setdefault(direction, framing)
            if have != framing:
                raise ValueError(
                    f"{what}: the {direction} stream is already cut into messages by {have!r}; "
                    f"triggers and holds on one direction need equal framings, got {framing!r}"
                )

        for hold in holds.values():
            need(hold.direction, hold.framing, f"hold({hold.direction!r})")
        for entry in entries:
            fault = entry[1]
            trigger = fault.on
            if trigger is None:
                continue
            if trigger.direction is not None:
                watched = [trigger.direction]
            else:
                watched = [d for d in ("upstream", "downstream") if fault.applies_to(d)]
            for direction in watched:
                need(direction, trigger.framing, f"on= of {fault!r}")
                triggers.setdefault(direction, []).append(entry)
        self._framings = framings
        self._triggers = triggers
        self._matches = {
            direction: tuple(entry[1].on.match for entry in watching)  # type: ignore[union-attr]
            for direction, watching in triggers.items()
        }
        self._quiet_triggers = bool(entries) and not holds and all(
            entry[1].on is not None for entry in entries
        )

    def down(self, *, reset_connections: bool = False) -> None:
        """Stop listening: new connections are refused (``ECONNREFUSED``) until :meth:`up`.

        Args:
            reset_connections: also reset (RST) the connections that are open.
        """

        def change() -> None:
            self._close_listener()
            if reset_connections:
                for conn in list(self._live.values()):
                    conn.abort("fault-reset", "proxy down")

        self._in_loop(change)

    def up(self) -> None:
        """Listen again on the same address after :meth:`down`."""
        if self._state != "started":
            raise RuntimeError(f"fault proxy {self.name} is not running ({self._state})")
        self._in_loop(lambda: None if self._listener is not None else self._listen())

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

    def stream_logs(self) -> dict[tuple[int, str], list[FaultEvent]]:
        """The log split by stream: ``(connection, direction)`` to its events, in order.

        What a seed decides is the events of each stream and their order; how the events
        of different streams interleave in :attr:`log` is up to timing. So two runs with
        one seed and the same traffic give equal stream logs (``a.stream_logs() ==
        b.stream_logs()``: events compare without their time), drawn values included.
        """
        streams: dict[tuple[int, str], list[FaultEvent]] = {}
        for event in sorted(self.log, key=lambda e: (e.connection, e.direction)):
            streams.setdefault((event.connection, event.direction), []).append(event)
        return streams

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
        """Block until ``count`` connections were accepted (or closed: the record and both
        of the proxy's sockets); ``TimeoutError``."""
        count, timeout = _values.wait_arguments(count, timeout)
        closing = self._closing

        def ready() -> bool:
            if closed:  # the record is closed first, its sockets just after
                n = sum(1 for r in self._records if r.closed and r not in closing)
            else:
                n = len(self._records)
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

    def _later(self, when: float, fn: Callable[[], None], conn: Connection | None = None) -> None:
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
                conn.abort("error", "proxy error")

        timer = reactor.call_at_locked(when, fire, on_error)
        timers.add(timer)

    def _record_error(self, index: int | None, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        with self._lock:
            self._errors.append((index, exc, text))

    def _log_event(self, index: int, direction: str, offset: int, action: str,
                   fault: ProxyFault | None, detail: str = "") -> None:
        event = FaultEvent(index, direction, offset, action, fault, time.monotonic(), detail)
        with self._lock:
            if len(self._log) < self._log_limit:
                self._log.append(event)

    def _listen(self) -> None:
        port = self._address[1] if self._address else self._port
        self._listener = _Listener(self, self._host, port)
        self._address = self._listener.address

    def _close_listener(self) -> None:
        if self._backoff is not None:
            self._backoff.cancel()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _shutdown_all(self) -> None:
        self._close_listener()
        for hold in list(self._holds.values()):
            hold.active = False
        self._holds = {}
        for conn in list(self._live.values()):
            conn.finish("proxy-stop", rst=False)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _faults_changed(self) -> None:
        for conn in list(self._live.values()):
            conn.faults_changed()


class _DownScope:
    def __init__(self, proxy: FaultProxy, reset_connections: bool) -> None:
        self._proxy = proxy
        self._reset = reset_connections

    def __enter__(self) -> FaultProxy:
        self._proxy.down(reset_connections=self._reset)
        return self._proxy

    def __exit__(self, *exc_info: object) -> None:
        self._proxy.up()


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


__all__ = [
    "FaultEvent",
    "FaultProxy",
    "ProxyConnection",
    "ProxyError",
    "ProxyFaultHandle",
    "ProxyHowClosed",
]
