"""In-process socket faults: script what the sockets of the code under test read and send.

A proxy cannot fix where a client's ``recv`` calls split the stream (the kernel merges
segments), so :class:`SocketFaults` acts on the client's own sockets. While installed it
patches methods of :class:`socket.socket` and :class:`ssl.SSLSocket` *in place* (the classes
stay the same objects, so ``isinstance`` checks elsewhere keep working):

- ``connect``/``connect_ex`` note each client socket the code under test connects, blocking
  or not: a non-blocking ``connect`` that raises ``BlockingIOError`` (what asyncio's
  ``loop.sock_connect`` does, hence ``asyncio.open_connection``, anyio, httpx's
  ``AsyncClient``, aiohttp) is noted too (a
  :class:`~pytest_netthreads.faults.FaultProxy` dials its target through the C method, so
  its own connections are never noted);
- ``recv``/``recv_into``/``send``/``sendall`` of a noted socket consult the fault rules
  whose address matches its peer; other sockets take a fast path to the original methods.

``makefile()`` reads through ``recv_into``, so ``http.client`` and friends are covered; so
are asyncio's ``loop.sock_recv``/``sock_recv_into``/``sock_sendall`` and its selector
transports, which call ``recv``/``recv_into``/``send`` on the socket object.

A rule that matched no socket by the end is an error, not silence: :meth:`SocketFaults.check`
(called when a ``with SocketFaults(...)`` block ends without an exception, and by the
``socket_faults`` fixture at teardown) raises :class:`UnmatchedRuleError` naming it, unless
it was added with ``required=False``.

TLS: faults act at the :class:`ssl.SSLSocket` level, on the *plaintext*: sizes and byte
counts are decrypted application bytes (the handshake itself is not faulted). A socket
wrapped with ``SSLContext.wrap_socket`` inherits the rules of the socket it wraps. Faulting
below TLS (on the ciphertext) would cut records and only ever produce TLS errors; use a
:class:`~pytest_netthreads.faults.FaultProxy` for that.

Everything is undone by :meth:`SocketFaults.undo` (or the end of its ``with`` block).
"""

from __future__ import annotations

import errno
import socket
import ssl
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._runtime import stacks
from .._runtime import values as _values
from .._runtime.patching import Patch, patch, undo_all
from .specs import RecvChunks, RecvError, SendError, ShortSends, SocketFault

_BASE: Any = socket.SocketType  # the C socket type: the methods socket.socket inherits
_SSL_ORIGINAL: dict[str, Any] = {
    name: ssl.SSLSocket.__dict__[name] for name in ("recv", "recv_into", "send", "_create")
}
_PATCHED_PLAIN = ("connect", "connect_ex", "recv", "recv_into", "send", "sendall")

_states: weakref.WeakKeyDictionary[socket.socket, _SocketState] = weakref.WeakKeyDictionary()
_installed: list[SocketFaults] = []
_install_lock = threading.Lock()


@dataclass(frozen=True)
class SocketFaultEvent:
    """One entry of :attr:`SocketFaults.log`: an error injected into a socket."""

    socket: int
    peer: Any
    operation: str
    offset: int
    call: int
    fault: SocketFault

    def __str__(self) -> str:
        return (
            f"socket #{self.socket} to {self.peer}: {self.operation} call {self.call} "
            f"at byte {self.offset}: {self.fault!r}"
        )


@dataclass(eq=False)
class FaultedSocket:
    """What :class:`SocketFaults` saw of one socket of the code under test."""

    index: int
    peer: Any
    tls: bool
    bytes_received: int = 0
    bytes_sent: int = 0
    recv_calls: int = 0
    send_calls: int = 0


class SocketFaultRule:
    """What :meth:`SocketFaults.add` returns: its faults, for the sockets it matches.

    :meth:`remove` takes the rule out (so does the end of a ``with`` block).
    """

    def __init__(
        self,
        owner: SocketFaults,
        faults: tuple[SocketFault, ...],
        targets: set[Any] | None,
        match: Callable[[Any], bool] | None,
        from_now: bool = False,
        *,
        address: Any = None,
        required: bool = True,
        where: str = "(unknown)",
    ) -> None:
        self._owner = owner
        self.faults = faults
        """The faults, in the order given."""
        self._targets = targets
        self._match = match
        self.from_now = from_now
        """Whether the rule counts calls and bytes from when it was added (see
        :meth:`SocketFaults.add`)."""
        # Per socket open when the rule was added (from_now): its counts then, as
        # (recv calls, send calls, bytes received, bytes sent); a later socket counts from 0.
        self._bases: weakref.WeakKeyDictionary[_SocketState, _Counts] = (
            weakref.WeakKeyDictionary()
        )

        self._address = address
        self.required = required
        """Whether matching no socket is an error (:meth:`SocketFaults.check`)."""
        self.where = where
        """``file:line in function`` of the code that added the rule."""
        self._sockets: list[FaultedSocket] = []

    def _base(self, state: _SocketState) -> _Counts:
        return self._bases.get(state, _ZERO)

    @property
    def sockets(self) -> list[FaultedSocket]:
        """The sockets this rule matched (connected while it was in, or live when it was
        added), oldest first. Empty: the rule never applied to anything."""
        with self._owner._lock:
            return list(self._sockets)

    def describe(self) -> str:
        """The rule in one line: its faults, what it matches, where it was added."""
        faults = ", ".join(repr(f) for f in self.faults)
        if self._match is not None:
            target = f"sockets whose peer match={self._match!r} accepts"
        elif self._address is not None:
            target = f"sockets connected to {_describe_address(self._address)}"
        else:
            target = "any socket"
        return f"{faults} for {target} (added at {self.where})"

    def _matches(self, peers: frozenset[Any]) -> bool:
        if self._match is not None:
            return any(self._match(p) for p in peers)
        return self._targets is None or bool(self._targets & peers)

    def remove(self) -> None:
        """Take the rule out (sockets it matched behave normally again). Idempotent."""
        with self._owner._lock:
            if self in self._owner._rules:
                self._owner._rules.remove(self)

    def __enter__(self) -> SocketFaultRule:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


class UnmatchedRuleError(AssertionError):
    """A :class:`SocketFaults` rule matched no socket: its faults were never applied.

    ``rules`` lists them. Raised by :meth:`SocketFaults.check`.
    """

    def __init__(self, message: str, rules: list[SocketFaultRule]) -> None:
        super().__init__(message)
        self.rules = rules


def _describe_address(address: Any) -> str:
    address = getattr(address, "address", address)
    return _values.format_address(address)


_Counts = tuple[int, int, int, int]
_ZERO: _Counts = (0, 0, 0, 0)


class _SocketState:
    def __init__(self, owner: SocketFaults, record: FaultedSocket, peers: frozenset[Any]):
        self.owner = owner
        self.record = record
        self.peers = peers

    def counts(self) -> _Counts:
        r = self.record
        return (r.recv_calls, r.send_calls, r.bytes_received, r.bytes_sent)

    def faults(self) -> list[tuple[SocketFault, _Counts]]:
        """The faults that apply, each with the counts its rule starts from."""
        owner = self.owner
        if not owner.installed:
            return []
        with owner._lock:
            rules = list(owner._rules)
        return [
            (f, rule._base(self)) for rule in rules if rule._matches(self.peers)
            for f in rule.faults
        ]

    def recv_limit(self, size: int) -> int:
        record = self.record
        record.recv_calls += 1
        for fault, (calls, _, received, _) in self.faults():
            # Counted from the rule's start: calls from 1, bytes from 0.
            call = record.recv_calls - calls
            pos = record.bytes_received - received
            if isinstance(fault, RecvError):
                if fault.at_call == call or (
                    fault.after_bytes is not None and pos >= fault.after_bytes
                ):
                    self._fail("recv", fault, record.bytes_received, record.recv_calls)
                if fault.after_bytes is not None:
                    size = min(size, fault.after_bytes - pos)
            elif isinstance(fault, RecvChunks):
                end = _boundary(fault.sizes, fault.cycle, pos)
                if end is not None:
                    size = min(size, end - pos)
        return size

    def send_limit(self, size: int) -> int:
        record = self.record
        record.send_calls += 1
        for fault, (_, calls, _, sent) in self.faults():
            call = record.send_calls - calls
            pos = record.bytes_sent - sent
            if isinstance(fault, SendError):
                if fault.at_call == call or (
                    fault.after_bytes is not None and pos >= fault.after_bytes
                ):
                    self._fail("send", fault, record.bytes_sent, record.send_calls)
                if fault.after_bytes is not None:
                    size = min(size, fault.after_bytes - pos)
            elif isinstance(fault, ShortSends):
                sizes = fault.sizes
                if call <= len(sizes):
                    size = min(size, sizes[call - 1])
                elif fault.cycle:
                    size = min(size, sizes[(call - 1) % len(sizes)])
        return size

    def _fail(self, operation: str, fault: RecvError | SendError, pos: int, call: int) -> None:
        record = self.record
        event = SocketFaultEvent(record.index, record.peer, operation, pos, call, fault)
        with self.owner._lock:
            self.owner._log.append(event)
        error = fault.error
        if isinstance(error, BaseException):
            raise error
        if issubclass(error, OSError) and error is not OSError:
            codes: dict[type[BaseException], int] = {
                ConnectionResetError: errno.ECONNRESET,
                BrokenPipeError: errno.EPIPE,
                ConnectionAbortedError: errno.ECONNABORTED,
            }
            code = codes.get(error)
            if code is not None:
                raise error(code, f"{errno.errorcode[code]} (injected by SocketFaults: {event})")
            if issubclass(error, TimeoutError):
                raise error(f"timed out (injected by SocketFaults: {event})")
        raise error(f"injected by SocketFaults: {event}")


def _boundary(sizes: Any, cycle: bool, pos: int) -> int | None:
    """The stream offset of the first chunk boundary after ``pos``, ``None`` past the end."""
    total: int = sum(sizes)
    base = 0
    if pos >= total:
        if not cycle:
            return None
        base = (pos // total) * total
    end: int = base
    for size in sizes:
        end += size
        if end > pos:
            return end
    return None  # pragma: no cover - unreachable: the sizes add up to more than pos


def _peers(address: Any) -> frozenset[Any]:
    """Normalise an address for matching: ``(ip, port)`` pairs, or a Unix path."""
    address = getattr(address, "address", address)
    if isinstance(address, (str, bytes)):
        return frozenset([address])
    if not (isinstance(address, tuple) and len(address) >= 2):
        raise TypeError(
            f"address must be a (host, port) tuple, a Unix path or an object with .address, "
            f"got {address!r}"
        )
    host = address[0]
    # A port out of range would match no socket: the faults would be silently ignored.
    port = _values.port(address[1], "address port", allow_zero=False)
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, TypeError):
            continue
        return frozenset([(host, port)])
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"address host {host!r} does not resolve ({exc})") from None
    return frozenset((info[4][0], port) for info in infos)


class SocketFaults:
    """Inject faults into the sockets the code under test connects; undone by :meth:`undo`.

    Usable without pytest (like ``MonkeyPatch.context()``)::

        with SocketFaults(faults.RecvChunks([1, 1, 2]), address=server.address) as sf:
            client.get(...)        # its recv calls return 1, 1, 2 bytes, then as usual
        print(sf.sockets, sf.log)

    A rule that matched no socket by the end of the block raises
    :class:`UnmatchedRuleError` there (see :meth:`check`).

    Args:
        faults: in-process faults (:class:`RecvChunks`, :class:`ShortSends`,
            :class:`RecvError`, :class:`SendError`) for a first rule (see :meth:`add`).
        address: that rule applies only to sockets connected to this address.
        match: or a predicate ``match(peer) -> bool`` on the ``(ip, port)`` or path.
        required: whether that rule matching no socket is an error (see :meth:`check`).
    """

    def __init__(
        self,
        *faults: SocketFault,
        address: Any = None,
        match: Callable[[Any], bool] | None = None,
        required: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._rules: list[SocketFaultRule] = []
        self._log: list[SocketFaultEvent] = []
        self._sockets: list[FaultedSocket] = []
        self._live_states: weakref.WeakSet[_SocketState] = weakref.WeakSet()  # added under _lock
        # Every rule ever added (check() reports those that matched nothing, removed or not)
        # and the live sockets this instance tracks, for add() to match against.
        self._all_rules: list[SocketFaultRule] = []
        self._live: weakref.WeakKeyDictionary[socket.socket, _SocketState] = (
            weakref.WeakKeyDictionary()
        )
        self.installed = False
        if faults:
            self._add(faults, address, match, False, required, sys._getframe(1))
        elif address is not None or match is not None:
            raise ValueError("address= and match= need faults to apply to; got no faults")
        elif required is not True:
            _check_required(required)
            raise ValueError("required= needs faults to apply to; got no faults")

    def add(
        self,
        *faults: SocketFault,
        address: Any = None,
        match: Callable[[Any], bool] | None = None,
        from_now: bool = False,
        required: bool = True,
    ) -> SocketFaultRule:
        """Add a rule: ``faults`` for sockets connected to ``address`` (default: any).

        Acts on sockets already connected too. Returns the :class:`SocketFaultRule`;
        ``with sf.add(...):`` removes it at the end of the block.

        Args:
            from_now: count ``at_call``, ``after_bytes``, ``RecvChunks`` offsets and
                ``ShortSends`` calls from this moment on the sockets already connected
                (``at_call=1`` is a pooled connection's next read), instead of from each
                socket's first call. Sockets connected later count from their first call
                either way.
            required: when true (the default), the rule must match at least one socket by
                the time :meth:`check` runs (the end of the ``with`` block, the fixture's
                teardown); pass ``False`` for a rule that may rightly match nothing.
        """
        return self._add(faults, address, match, from_now, required, sys._getframe(1))

    def _add(
        self,
        faults: tuple[SocketFault, ...],
        address: Any,
        match: Callable[[Any], bool] | None,
        from_now: object,
        required: object,
        frame: Any,
    ) -> SocketFaultRule:
        if not isinstance(from_now, bool):
            raise TypeError(f"from_now must be a bool, got {from_now!r}")
        if not faults:
            raise ValueError("add() needs at least one fault")
        for fault in faults:
            if not isinstance(fault, (RecvChunks, ShortSends, RecvError, SendError)):
                raise TypeError(
                    "faults must be in-process socket faults (RecvChunks, ShortSends, "
                    f"RecvError, SendError), got {fault!r}"
                )
        if address is not None and match is not None:
            raise ValueError("give address= or match=, not both")
        if match is not None and not callable(match):
            raise TypeError(f"match must be a callable taking the peer address, got {match!r}")
        _check_required(required)
        targets = None if address is None else set(_peers(address))
        rule = SocketFaultRule(
            self,
            tuple(faults),
            targets,
            match,
            from_now,
            address=address,
            required=bool(required),
            where=stacks.where(stacks.capture(frame, limit=8)),
        )
        with self._lock:
            if from_now:
                for state in self._live_states:
                    rule._bases[state] = state.counts()
            # The live sockets it applies to from now on count as matched.
            for sock, live in list(self._live.items()):
                if sock.fileno() != -1 and rule._matches(live.peers):
                    rule._sockets.append(live.record)
            self._rules.append(rule)
            self._all_rules.append(rule)
        return rule

    @property
    def rules(self) -> list[SocketFaultRule]:
        """Every rule added so far (removed ones too), oldest first."""
        with self._lock:
            return list(self._all_rules)

    def unmatched(self) -> list[SocketFaultRule]:
        """The required rules that have matched no socket so far."""
        with self._lock:
            return [r for r in self._all_rules if r.required and not r._sockets]

    def format_unmatched(self) -> str:
        """What :meth:`check` would raise, or ``""`` when every required rule matched."""
        unmatched = self.unmatched()
        if not unmatched:
            return ""
        sockets = self.sockets
        lines = [
            f"SocketFaults: {len(unmatched)} rule(s) matched no socket, so their faults were "
            "never applied:"
        ]
        lines += [f"  - {rule.describe()}" for rule in unmatched]
        if sockets:
            lines.append("sockets connected while installed:")
            lines += [
                f"  - socket #{s.index} to {_values.format_address(s.peer)}"
                + (" (TLS)" if s.tls else "")
                for s in sockets
            ]
        else:
            lines.append("no socket was connected while installed.")
        lines += [
            "Only sockets connected while installed are seen, by socket.socket.connect or",
            "connect_ex, blocking or not (asyncio, anyio, httpx and aiohttp clients too).",
            "Not seen: sockets connected before, or by C code that does not call those",
            "methods (uvloop, C extensions); UDP. A wrong address= is the other usual cause.",
            "Add the rule with required=False if it may rightly match nothing.",
        ]
        return "\n".join(lines)

    def check(self) -> None:
        """Raise :class:`UnmatchedRuleError` if a required rule matched no socket.

        Called when a ``with`` block ends without an exception and by the ``socket_faults``
        fixture, so that a rule the code under test never met (a client that connects in a
        way this does not see, a wrong address) fails the test instead of passing it for
        the wrong reason.
        """
        message = self.format_unmatched()
        if message:
            raise UnmatchedRuleError(message, self.unmatched())

    def clear(self) -> None:
        """Remove every rule (sockets behave normally again)."""
        with self._lock:
            self._rules.clear()

    @property
    def sockets(self) -> list[FaultedSocket]:
        """Every client socket connected while installed, with its counters."""
        with self._lock:
            return list(self._sockets)

    @property
    def log(self) -> list[SocketFaultEvent]:
        """The errors injected so far, oldest first."""
        with self._lock:
            return list(self._log)

    def install(self) -> SocketFaults:
        """Patch the socket methods (idempotent). Returns ``self``."""
        with _install_lock:
            if self.installed:
                return self
            if not _installed:
                _patch()
            _installed.append(self)
            self.installed = True
        return self

    def undo(self) -> None:
        """Restore the socket methods (when no other instance is installed). Idempotent."""
        with _install_lock:
            if not self.installed:
                return
            self.installed = False
            _installed.remove(self)
            if not _installed:
                _unpatch()

    def __enter__(self) -> SocketFaults:
        return self.install()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.undo()
        if exc_type is None:
            self.check()

    def _track(self, sock: socket.socket, address: Any, tls: bool) -> None:
        try:
            peers = _peers(address)
        except (TypeError, ValueError):
            return
        peer = address if isinstance(address, str) else tuple(address[:2])
        with self._lock:
            record = FaultedSocket(len(self._sockets), peer, tls)
            self._sockets.append(record)
            state = _states[sock] = _SocketState(self, record, peers)
            self._live_states.add(state)
            self._note_matches(sock, state)

    def _note_matches(self, sock: socket.socket, state: _SocketState) -> None:
        """Under the lock: ``sock`` is tracked; the rules it matches now count as matched."""
        self._live[sock] = state
        for rule in self._rules:
            if rule._matches(state.peers):
                rule._sockets.append(state.record)


def _check_required(required: object) -> None:
    if not isinstance(required, bool):
        raise TypeError(f"required must be a bool, got {required!r}")


# -- the patched methods ---------------------------------------------------------------------


def _note(sock: socket.socket, address: Any) -> None:
    if not _installed:
        return
    if sock.type != socket.SOCK_STREAM or sock in _states:
        return  # a second connect() call (to see a non-blocking one finish) is the same one
    owner = _installed[-1]
    owner._track(sock, address, tls=False)


def _connect(self: socket.socket, address: Any) -> None:
    try:
        _BASE.connect(self, address)
    except (BlockingIOError, InterruptedError):
        # A non-blocking connect under way (asyncio's sock_connect, hence open_connection,
        # anyio, httpx, aiohttp): it finishes in the background, and the reads and sends
        # that follow go through the methods patched here.
        _note(self, address)
        raise
    _note(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    result: int = _BASE.connect_ex(self, address)
    if result in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
        _note(self, address)
    return result


def _byte_view(data: Any) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _recv(self: socket.socket, bufsize: int, flags: int = 0) -> bytes:
    state = _states.get(self)
    if state is None or bufsize <= 0:
        return _BASE.recv(self, bufsize, flags)  # type: ignore[no-any-return]
    data: bytes = _BASE.recv(self, state.recv_limit(bufsize), flags)
    state.record.bytes_received += len(data)
    return data


def _recv_into(self: socket.socket, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
    state = _states.get(self)
    size = nbytes or memoryview(buffer).nbytes
    if state is None or size <= 0:
        return _BASE.recv_into(self, buffer, nbytes, flags)  # type: ignore[no-any-return]
    n: int = _BASE.recv_into(self, buffer, state.recv_limit(size), flags)
    state.record.bytes_received += n
    return n


def _send(self: socket.socket, data: Any, flags: int = 0) -> int:
    state = _states.get(self)
    if state is None:
        return _BASE.send(self, data, flags)  # type: ignore[no-any-return]
    view = _byte_view(data)
    if not view.nbytes:
        return _BASE.send(self, view, flags)  # type: ignore[no-any-return]
    n: int = _BASE.send(self, view[: state.send_limit(view.nbytes)], flags)
    state.record.bytes_sent += n
    return n


def _sendall(self: socket.socket, data: Any, flags: int = 0) -> None:
    if _states.get(self) is None:
        _BASE.sendall(self, data, flags)
        return
    view = _byte_view(data)
    while view.nbytes:
        n = _send(self, view, flags)
        view = view[n:]


def _ssl_recv(self: ssl.SSLSocket, buflen: int = 1024, flags: int = 0) -> bytes:
    state = _states.get(self)
    if state is None or buflen <= 0:
        return _SSL_ORIGINAL["recv"](self, buflen, flags)  # type: ignore[no-any-return]
    data: bytes = _SSL_ORIGINAL["recv"](self, state.recv_limit(buflen), flags)
    state.record.bytes_received += len(data)
    return data


def _ssl_recv_into(
    self: ssl.SSLSocket, buffer: Any, nbytes: int | None = None, flags: int = 0
) -> int:
    state = _states.get(self)
    size = nbytes or memoryview(buffer).nbytes
    if state is None or size <= 0:
        return _SSL_ORIGINAL["recv_into"](self, buffer, nbytes, flags)  # type: ignore[no-any-return]
    n: int = _SSL_ORIGINAL["recv_into"](self, buffer, state.recv_limit(size), flags)
    state.record.bytes_received += n
    return n


def _ssl_send(self: ssl.SSLSocket, data: Any, flags: int = 0) -> int:
    state = _states.get(self)
    if state is None:
        return _SSL_ORIGINAL["send"](self, data, flags)  # type: ignore[no-any-return]
    view = _byte_view(data)
    if not view.nbytes:
        return _SSL_ORIGINAL["send"](self, view, flags)  # type: ignore[no-any-return]
    n: int = _SSL_ORIGINAL["send"](self, view[: state.send_limit(view.nbytes)], flags)
    state.record.bytes_sent += n
    return n


def _ssl_create(cls: type[ssl.SSLSocket], sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
    state = _states.get(sock)
    new = _SSL_ORIGINAL["_create"].__func__(cls, sock, *args, **kwargs)
    if state is not None and state.owner.installed:
        owner = state.owner
        with owner._lock:
            record = FaultedSocket(len(owner._sockets), state.record.peer, True)
            owner._sockets.append(record)
            made = _states[new] = _SocketState(owner, record, state.peers)
            owner._live_states.add(made)
            owner._note_matches(new, made)
    return new


# What _patch() replaced, undone by _unpatch() (only while still ours: see _runtime.patching).
_patches: list[Patch] = []


def _patch() -> None:
    plain = (_connect, _connect_ex, _recv, _recv_into, _send, _sendall)
    tls = {
        "recv": _ssl_recv,
        "recv_into": _ssl_recv_into,
        "send": _ssl_send,
        "_create": classmethod(_ssl_create),
    }
    # Appended: one a conflict kept (see _unpatch) is tried again after these.
    _patches.extend(
        [
            *(patch(socket.socket, n, f, by="SocketFaults") for n, f in zip(_PATCHED_PLAIN, plain)),
            *(patch(ssl.SSLSocket, n, f, by="SocketFaults") for n, f in tls.items()),
        ]
    )


def _unpatch() -> None:
    undo_all(_patches)  # one replaced by someone else since is left to them, and reported


def patched() -> bool:
    """Whether the socket methods are patched now (some :class:`SocketFaults` installed)."""
    return bool(_patches)


__all__ = [
    "FaultedSocket",
    "SocketFaultEvent",
    "SocketFaultRule",
    "SocketFaults",
    "UnmatchedRuleError",
    "patched",
]
