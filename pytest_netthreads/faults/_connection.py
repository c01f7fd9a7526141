"""One connection through a :class:`~pytest_netthreads.faults.FaultProxy`: its state machine
and its data path.

A connection has two pipes, ``upstream`` (client to server) and ``downstream`` (server to
client). A pipe reads its source, turns each chunk into timed segments according to the
behaviours of the faults that apply to it (``_behaviour.py``), and writes them out when
they are due. Marks in the same queue (FIN, and the marks of faults such as ResetPeer) keep
actions in order with the data. With no fault active a chunk is written straight through
(:meth:`Side.forward`).

Everything here runs under the event loop's lock (in its callbacks, or in a change the
proxy makes from another thread while holding it).
"""

from __future__ import annotations

import collections
import errno
import random
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from .._runtime.reactor import EVENT_READ, EVENT_WRITE, RESOURCE_ERRNOS, AcceptBackoff
from ._behaviour import Behaviour, Chunk
from .hold import HeldMessage

if TYPE_CHECKING:
    from .framing import Framing
    from .proxy import FaultProxy, ProxyConnection, ProxyHowClosed
    from .specs import ProxyFault

_READ = EVENT_READ
_WRITE = EVENT_WRITE
_CHUNK = 262144
_BULK = 65536  # a no-fault read this small ends a pipe's bulk mode (Side.forward)
_HIGH_WATER = 1 << 20  # bytes queued in one pipe before it stops reading its source
_LINGER_ZERO = struct.pack("ii", 1, 0)
_FIN = "fin"
_CONNECT_ERRNOS = (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)
_C_CONNECT_EX = socket.SocketType.connect_ex
_INF = float("inf")

FaultEntry = tuple[int, "ProxyFault", type[Behaviour[Any]]]
"""A fault as the proxy holds it: ``(id, fault, its behaviour class)``."""


class _Rest(bytes):
    """Pending bytes that are not a whole message (the rest of one cut by a stall, or an
    incomplete one passed on as it is): delivered without meeting the triggers again."""


def nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class Pipe:
    """One direction of a connection: reads its source, queues timed data, writes it out."""

    def __init__(self, conn: Connection, direction: str, rng: random.Random) -> None:
        self.conn = conn
        self.direction = direction
        self.rng = rng
        self.other = self  # the pipe of the other direction, set by the connection
        self.offset = 0
        self.queue: collections.deque[list[Any]] = collections.deque()
        self.queued = 0
        self.eof = False
        self.fin_sent = False
        self.discard = False
        self.write_blocked = False
        self.buffer: memoryview | None = None  # see Side.forward
        self.timer_at: float | None = None
        self.last_ready = 0.0
        self.paced_until = 0.0  # see BandwidthBehaviour.pace
        # Per fault id: its behaviour on this pipe, or None (not drawn, or not for this pipe).
        self.decided: dict[int, Behaviour[Any] | None] = {}
        # Message mode (a trigger or a hold watches this direction): the framing cuts what
        # is read into messages, which wait in `pending` (behind a hold or a stall) until
        # they are delivered, one by one, to the behaviours. `offset` then counts the bytes
        # delivered, so faults' offsets fall on message boundaries.
        self.framing: Framing | None = None
        self.framing_spec: Framing | None = None
        self.pending: collections.deque[bytes | HeldMessage] = collections.deque()
        self.messages = 0  # messages framed so far
        self.delivered = 0  # messages passed to the behaviours so far
        self.counts: dict[int, int] = {}  # per triggered fault: messages that counted
        self.next_window: list[Behaviour[Any]] = []  # fired at="end": shape the next message
        self.fin_queued = False
        self.fired_any = False  # a triggered fault fired here (Side.forward_messages)

    @property
    def src(self) -> socket.socket | None:
        return self.conn.client if self.direction == "upstream" else self.conn.server

    @property
    def dst(self) -> socket.socket | None:
        return self.conn.server if self.direction == "upstream" else self.conn.client

    # -- which faults act --------------------------------------------------------------------

    def draw(self, fault: ProxyFault, kind: type[Behaviour[Any]]) -> Behaviour[Any] | None:
        """Whether ``fault`` applies here, drawn once from this pipe's generator: its behaviour."""
        chance = fault.chance
        if chance >= 1.0:
            chosen = True
        else:
            drawn = self.rng.random()
            chosen = drawn < chance
            self.conn.event(self.direction, self.offset, "chosen" if chosen else "skipped", fault,
                            f"drew {drawn:.6f} {'<' if chosen else '>='} probability {chance:g}")
        return kind(fault, self) if chosen else None

    def active(self) -> list[Behaviour[Any]]:
        """The behaviours acting on this pipe now, in the order their faults were added."""
        decided = self.decided
        found = []
        for fid, fault, kind in self.conn.proxy._faults:
            try:
                behaviour = decided[fid]
            except KeyError:
                if kind.connect or not fault.applies_to(self.direction):
                    decided[fid] = None  # never drawn here (a connection's own faults aren't)
                    continue
                behaviour = decided[fid] = self.draw(fault, kind)
            if behaviour is not None and behaviour.fired:
                found.append(behaviour)
        return found

    def behaviour(self, fid: int, fault: ProxyFault, kind: type[Behaviour[Any]]
                  ) -> Behaviour[Any] | None:
        """The behaviour of fault ``fid`` here (drawn now if it was not yet)."""
        try:
            return self.decided[fid]
        except KeyError:
            behaviour = self.decided[fid] = self.draw(fault, kind)
            return behaviour

    def want_read(self) -> bool:
        conn = self.conn
        if self.eof or self.queued >= _HIGH_WATER or self.pending:
            return False
        if self.direction == "downstream" and conn.state != "open":
            return False
        if conn.state not in ("open", "connecting"):
            return False
        return not any(behaviour.stops_reading() for behaviour in self.active())

    # -- data ----------------------------------------------------------------------------------

    def read(self) -> None:
        conn = self.conn
        src = self.src
        if src is None or self.eof:
            return
        if conn.proxy._framings or self.framing is not None:
            self.sync_framing()
            if self.framing is not None:
                self.read_messages(src)
                return
        if self.pending:
            self.drain()
            return
        active = self.active()
        limit = _CHUNK
        for behaviour in active:
            mark = behaviour.stop_at()
            if mark is not None and mark > self.offset:
                limit = min(limit, mark - self.offset)
        try:
            data = src.recv(limit)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.peer_error(exc)
            return
        now = time.monotonic()
        if not data:
            self.eof = True
            self.end_stream(now, active)
            return
        offset = self.offset
        self.offset += len(data)
        if self.direction == "upstream":
            conn.record.bytes_upstream += len(data)
        else:
            conn.record.bytes_downstream += len(data)
        self.take(data, offset, now, active)

    def end_stream(self, now: float, active: list[Behaviour[Any]]) -> None:
        """The source ended: queue the FIN (late if a fault says so)."""
        if self.fin_queued:
            return
        self.fin_queued = True
        delay = max((behaviour.close_delay() for behaviour in active), default=0.0)
        if delay:
            self.conn.event(self.direction, self.offset, f"slow close {delay:g}s", None)
        self.push(now + delay, _FIN)
        self.flush()

    def take(self, data: bytes, offset: int, now: float, active: list[Behaviour[Any]]) -> None:
        """Shape data read at stream ``offset`` by the behaviours and queue it."""
        if self.discard:
            return
        if any(behaviour.drops(offset) for behaviour in active):
            return
        chunk = Chunk(data, offset, now)
        for behaviour in active:
            window = behaviour.window
            if window is None or behaviour.persists or window[0] <= offset < window[1]:
                behaviour.on_data(chunk)
        self.schedule(chunk)
        self.thresholds()
        if self.conn.state != "closed":
            self.flush()

    # -- messages ------------------------------------------------------------------------------

    def sync_framing(self) -> None:
        """Start or stop cutting this direction into messages, as the proxy's triggers and
        holds now ask (a partial message left over is passed on as it is)."""
        spec = self.conn.proxy._framings.get(self.direction)
        if spec is self.framing_spec:
            return
        if spec is not None and spec == self.framing_spec:
            self.framing_spec = spec  # an equal framing (its first user was removed): go on
            return
        if self.framing is not None:
            tail = self.framing.take_pending()
            if tail:
                self.pending.append(_Rest(tail))
        self.framing_spec = spec
        self.framing = None if spec is None else spec.fresh()

    def read_messages(self, src: socket.socket) -> None:
        conn = self.conn
        framing = self.framing
        assert framing is not None
        view = conn.view
        try:
            n = src.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.peer_error(exc)
            return
        if not n:
            self.eof = True
            tail = framing.take_pending()
            if tail:  # an incomplete message goes on as it is
                self.pending.append(_Rest(tail))
            self.drain()
            return
        if self.direction == "upstream":
            conn.record.bytes_upstream += n
        else:
            conn.record.bytes_downstream += n
        messages = framing.feed(bytes(view[:n]))
        hold = conn.proxy._holds.get(self.direction)
        pending = self.pending
        for data in messages:
            self.messages += 1
            if hold is not None:
                pending.append(hold.take(self, self.messages, data))
            else:
                pending.append(data)
        self.drain()

    def drain(self) -> None:
        """Deliver the pending messages, up to one still held (or a stall)."""
        conn = self.conn
        pending = self.pending
        while pending and conn.state != "closed":
            item = pending[0]
            if isinstance(item, HeldMessage):
                if item.state == "held":
                    break
                pending.popleft()
                if item.state != "released":
                    continue
                data = item.data
            else:
                pending.popleft()
                data = item
            if not self.deliver(data, whole=not isinstance(data, _Rest)):
                break
        if conn.state == "closed":
            return
        if self.eof and not pending:
            self.end_stream(time.monotonic(), self.active())
        conn.update()

    def resume(self) -> None:
        """Held messages were released or dropped, or faults changed: go on."""
        if self.conn.state != "closed":
            self.drain()

    def deliver(self, data: bytes, *, whole: bool = True) -> bool:
        """Pass one message (or the rest of one) to the behaviours and on; ``False`` if the
        pipe must stop here (a stall: the rest waits in ``pending``; or the end)."""
        conn = self.conn
        proxy = conn.proxy
        if whole:
            self.delivered += 1
            triggers = proxy._triggers.get(self.direction)
            if triggers:
                self.fire_triggers(triggers, data)
        size = len(data)
        if self.next_window:
            for behaviour in self.next_window:
                behaviour.window = (self.offset, self.offset + size)
            self.next_window.clear()
        active = self.active()
        if not active and not self.queue and conn.state == "open":
            # The no-fault path (a trigger that did not fire): straight on.
            self.offset += size
            if self.discard:
                return True
            dst = self.dst
            assert dst is not None
            try:
                sent = dst.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.peer_error(exc)
                return False
            if sent < size:
                self.push(0.0, memoryview(data)[sent:])
                self.write_blocked = True
            return True
        now = time.monotonic()
        pos = 0
        while pos < size:
            if pos:
                active = self.active()
            if any(behaviour.stops_reading() for behaviour in active):
                self.pending.appendleft(_Rest(data[pos:]))
                return False
            limit = size - pos
            for behaviour in active:
                mark = behaviour.stop_at()
                if mark is None:
                    continue
                if mark > self.offset:
                    limit = min(limit, mark - self.offset)
                elif behaviour.marks and not behaviour.marked:
                    # Its point is here: the mark goes before this message's bytes.
                    behaviour.marked = True
                    behaviour.mark_offset = self.offset
                    self.push(self.last_ready, behaviour)
            if self.queue and isinstance(self.queue[-1][1], Behaviour):
                self.flush()
                if conn.state == "closed":
                    return False
            offset = self.offset
            self.offset += limit
            self.take(data[pos : pos + limit], offset, now, active)
            pos += limit
            if conn.state == "closed":
                return False
        return True

    def fire_triggers(self, triggers: list[FaultEntry], data: bytes) -> None:
        """Fire the faults whose trigger this message (delivered next, at ``offset``) meets."""
        conn = self.conn
        proxy = conn.proxy
        for fid, fault, kind in triggers:
            trigger = fault.on
            assert trigger is not None
            if not trigger.matches(data):
                continue
            if trigger.nth is not None:
                if trigger.scope == "connection":
                    n = self.counts[fid] = self.counts.get(fid, 0) + 1
                else:
                    key = (fid, self.direction)
                    n = proxy._message_counts[key] = proxy._message_counts.get(key, 0) + 1
                if n != trigger.nth:
                    continue
            for pipe in (conn.up, conn.down):
                if not fault.applies_to(pipe.direction):
                    continue
                if pipe is not self and trigger.direction is None:
                    continue  # it watches its own direction: that pipe fires on its own
                behaviour = pipe.behaviour(fid, fault, kind)
                if behaviour is None:
                    continue
                if pipe is self:
                    start = self.offset
                    end = start + len(data)
                    if trigger.at == "start":
                        behaviour.fire(start, end)
                    else:
                        behaviour.fire(end, end)
                        if not behaviour.persists:
                            self.next_window.append(behaviour)
                    what = f"triggered by message {self.delivered}"
                else:
                    behaviour.fire(pipe.offset, _INF)
                    what = f"triggered by {self.direction} message {self.delivered}"
                pipe.fired_any = True
                pipe.conn.event(pipe.direction, behaviour.base, what, fault)
                if pipe is not self:
                    pipe.thresholds()

    def schedule(self, chunk: Chunk) -> None:
        """Queue a shaped chunk: cut, each piece due no earlier than the one before it."""
        view = memoryview(chunk.data)
        pieces = [(0.0, len(view))] if chunk.cut is None else chunk.cut(len(view))
        pace = chunk.pace
        base = max(chunk.ready, self.last_ready)
        pos = 0
        for extra, length in pieces:
            at = max(base + extra, self.last_ready)
            piece = view[pos : pos + length]
            pos += length
            if pace is None:
                self.push(at, piece)
                self.last_ready = at
            else:
                pace(piece, at, chunk)

    def thresholds(self) -> None:
        """Queue the marks of the faults whose point this pipe has reached."""
        if self.conn.state != "open":
            return
        for behaviour in self.active():
            if behaviour.marks and not behaviour.marked:
                at = behaviour.stop_at()
                if at is not None and self.offset >= at:
                    behaviour.marked = True
                    behaviour.mark_offset = self.offset
                    self.push(self.last_ready, behaviour)
        self.flush()

    def push(self, at: float, item: Any) -> None:
        """Queue data (a memoryview), a FIN or a fault's mark (its behaviour), due at ``at``."""
        self.queue.append([at, item])
        if isinstance(item, memoryview):
            self.queued += len(item)

    def clear(self) -> None:
        self.queue.clear()
        self.queued = 0

    def flush(self) -> None:
        conn = self.conn
        dst = self.dst
        if conn.state != "open" or dst is None:
            return
        queue = self.queue
        now = time.monotonic()
        while queue:
            at, item = queue[0]
            if at > now:
                now = time.monotonic()
                if at > now:
                    if self.timer_at is None or self.timer_at > at:
                        self.timer_at = at
                        conn.proxy._later(at, self.on_timer, conn)
                    break
            if isinstance(item, memoryview):
                try:
                    n = dst.send(item)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError as exc:
                    self.peer_error(exc)
                    return
                if n < len(item):
                    queue[0][1] = item[n:]
                    self.queued -= n
                    self.write_blocked = True
                    break
                queue.popleft()
                self.queued -= n
                continue
            queue.popleft()
            if item is _FIN:
                self.send_fin()
            else:
                item.on_mark()
                if conn.state == "closed":
                    return
        else:
            self.write_blocked = False
        if conn.state != "closed":
            conn.update()

    def on_timer(self) -> None:
        self.timer_at = None
        if self.conn.state != "closed":
            self.flush()

    def send_fin(self) -> None:
        conn = self.conn
        if not self.fin_sent:
            self.fin_sent = True
            dst = self.dst
            if dst is not None:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if conn.up.fin_sent and conn.down.fin_sent and conn.up.eof and conn.down.eof:
            conn.finish("eof", rst=False)

    def peer_error(self, exc: OSError) -> None:
        """A read or write failed (a reset, say): log it and reset the other side too."""
        self.conn.event(self.direction, self.offset, f"peer error: {exc}", None)
        self.conn.abort("reset", None)


class Connection:
    """A connection's state machine: accepted, (held or delayed,) dialing, open, closed."""

    def __init__(self, proxy: FaultProxy, record: ProxyConnection, client: socket.socket):
        self.proxy = proxy
        self.record = record
        self.index = record.index
        self.client = client
        self.server: socket.socket | None = None
        self.state = "new"  # held, delayed, connecting, open, closed
        self.view = proxy._view  # the loop's receive buffer (Side.forward)
        seed = proxy.seed
        self.up = Pipe(self, "upstream", random.Random(f"{seed}:{self.index}:upstream"))
        self.down = Pipe(self, "downstream", random.Random(f"{seed}:{self.index}:downstream"))
        self.up.other, self.down.other = self.down, self.up
        self.connect_decided: dict[int, Behaviour[Any] | None] = {}
        self.client_side = Side(self, client, self.up, self.down)
        self.server_side: Side | None = None

    def event(self, direction: str, offset: int, action: str, fault: ProxyFault | None,
              detail: str = "") -> None:
        self.proxy._log_event(self.index, direction, offset, action, fault, detail)

    # -- setting up ------------------------------------------------------------------------------

    def begin(self) -> None:
        """Dial the target, unless a connection fault holds or delays it."""
        wait: float | None = None
        why: Behaviour[Any] | None = None
        for behaviour in self._connect_behaviours():
            mine = behaviour.dial_wait()
            if mine is not None and (wait is None or mine > wait):
                wait, why = mine, behaviour
        if wait is not None and why is not None:
            if wait == float("inf"):
                if self.state != "held":
                    self.event("connection", 0, "hold", why.fault)
                self.state = "held"
                return
            if self.state == "new":
                self.event("connection", 0, f"delay connect {wait:g}s", why.fault)
                self.state = "delayed"
                self.proxy._later(time.monotonic() + wait, self.dial, self)
                return
        self.dial()

    def _connect_behaviours(self) -> list[Behaviour[Any]]:
        # Connection faults ignore direction; their draw comes from the upstream generator.
        decided = self.connect_decided
        found = []
        for fid, fault, kind in self.proxy._faults:
            if not kind.connect:
                continue
            try:
                behaviour = decided[fid]
            except KeyError:
                behaviour = decided[fid] = self.up.draw(fault, kind)
            if behaviour is not None:
                found.append(behaviour)
        return found

    def dial(self) -> None:
        if self.state in ("closed", "connecting", "open"):
            return
        proxy = self.proxy
        try:
            server = socket.socket(proxy._target_family, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno not in RESOURCE_ERRNOS:
                raise
            failures = proxy._dial_failures
            if failures is None:
                failures = proxy._dial_failures = AcceptBackoff(
                    f"fault proxy {proxy.name}", operation="socket() for dialing the target"
                )
            failures.failed(exc)
            self.connect_failed(exc.errno or 0)
            return
        server.setblocking(False)
        self.server = server
        self.server_side = Side(self, server, self.down, self.up)
        self.server_side.peer = self.client
        self.client_side.peer = server
        self.state = "connecting"
        # The C method, not socket.socket's: under SocketFaults, sockets connected through
        # the patched one are the code under test's (and this may run in any thread).
        err = _C_CONNECT_EX(server, proxy._target)
        if err not in _CONNECT_ERRNOS:
            self.connect_failed(err)
            return
        self.update()

    def connect_failed(self, err: int) -> None:
        name = errno.errorcode.get(err, str(err))
        self.event("connection", 0, f"connect to target failed: {name}", None)
        self.finish("connect-failed", rst=True)

    def on_connected(self) -> None:
        assert self.server is not None
        err = self.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.connect_failed(err)
            return
        try:
            self.server.getpeername()
        except OSError:
            # Not connected yet: the shared loop looks targets up when it dispatches, so an
            # event of a socket closed earlier in the same batch can reach a new socket that
            # got its descriptor number. Wait for the real event.
            return
        if self.proxy._target_family != socket.AF_UNIX:
            nodelay(self.server)
        self.state = "open"
        self.up.thresholds()
        self.down.thresholds()
        self.up.flush()

    # -- running ---------------------------------------------------------------------------------

    def faults_changed(self) -> None:
        if self.state == "closed":
            return
        if self.state == "held":
            self.begin()
        for pipe in (self.up, self.down):
            if self.state != "closed" and (pipe.framing is not None or self.proxy._framings
                                           or pipe.pending):
                pipe.sync_framing()
                pipe.drain()
            if self.state == "open":
                pipe.thresholds()
                if self.state == "closed":
                    break
                pipe.flush()
        if self.state != "closed":
            self.update()

    def on_event(self, side: Side, mask: int) -> None:
        if self.state == "connecting" and side is self.server_side:
            if mask & (_WRITE | _READ):
                self.on_connected()
            self.update()
            return
        if mask & _WRITE:
            side.back.flush()
        if mask & _READ and self.state != "closed":
            side.pipe.read()
        self.update()

    def update(self) -> None:
        """Register each socket for what its pipes need now."""
        if self.state == "closed" or self.proxy._reactor is None:
            return
        up, down = self.up, self.down
        client_ev = (_READ if up.want_read() else 0) | (_WRITE if down.write_blocked else 0)
        self._set_events(self.client_side, client_ev)
        if self.server_side is not None:
            server_ev = (_READ if down.want_read() else 0) | (
                _WRITE if up.write_blocked or self.state == "connecting" else 0
            )
            self._set_events(self.server_side, server_ev)

    def _set_events(self, side: Side, events: int) -> None:
        have = side.events
        if have == events:
            return
        reactor = self.proxy._reactor
        assert reactor is not None
        if not have:
            reactor.register_locked(side.sock, events, side)
        elif not events:
            reactor.unregister_locked(side.sock)
        else:
            reactor.modify_locked(side.sock, events, side)
        side.events = events

    # -- ending ----------------------------------------------------------------------------------

    def abort(self, how: ProxyHowClosed, why: str | None) -> None:
        if why:
            self.event("connection", 0, why, None)
        self.finish(how, rst=True)

    def finish(self, how: ProxyHowClosed, *, rst: bool) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        proxy = self.proxy
        # The record first: a client that sees the close (EOF, a reset) and then reads
        # proxy.connections finds it closed.
        with proxy._lock:
            self.record.how_closed = how
            self.record.closed_at = time.time()
            proxy._closing.add(self.record)
        try:
            for pipe in (self.up, self.down):
                for item in pipe.pending:
                    if isinstance(item, HeldMessage) and item.state == "held":
                        item.hold.forget(item)
            for side in (self.client_side, self.server_side):
                if side is None:
                    continue
                side.closed = True
                sock = side.sock
                if side.events and proxy._reactor is not None:
                    proxy._reactor.unregister_locked(sock)
                    side.events = 0
                if rst:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
                    except OSError:
                        pass
                sock.close()
        finally:
            proxy._live.pop(self.index, None)
            with proxy._lock:
                proxy._closing.discard(self.record)
                proxy._changed.notify_all()


class Side:
    """The loop's view of one socket of a connection (an ``EventTarget``)."""

    __slots__ = ("back", "closed", "conn", "events", "is_client", "peer", "pipe", "sock")

    def __init__(self, conn: Connection, sock: socket.socket, pipe: Pipe, back: Pipe) -> None:
        self.closed = False
        self.conn = conn
        self.events = 0  # what it is registered for
        self.sock = sock
        self.is_client = pipe.direction == "upstream"
        self.pipe = pipe  # the pipe this socket feeds
        self.back = back  # the pipe that writes to this socket
        self.peer: socket.socket | None = None  # where that pipe writes, once connected

    def on_event(self, mask: int) -> None:
        conn = self.conn
        mask &= self.events  # an error or hang-up is reported as both
        if mask == _READ and conn.state == "open":
            proxy = conn.proxy
            pipe = self.pipe
            if not proxy._faults and not proxy._framings:
                if not (pipe.queue or pipe.discard or pipe.eof):
                    self.forward(pipe)
                    return
            elif proxy._quiet_triggers and not (
                pipe.queue or pipe.pending or pipe.discard or pipe.eof or pipe.fired_any
            ):
                # Every fault waits for a trigger and none fired here: no fault acts yet.
                spec = proxy._framings.get(pipe.direction)
                if spec is None:
                    if pipe.framing is None:  # (else it must first leave message mode)
                        self.forward(pipe)
                        return
                elif pipe.framing_spec is spec:
                    self.forward_messages(pipe)
                    return
        conn.on_event(self, mask)

    def forward_messages(self, pipe: Pipe) -> None:
        """The path of a pipe cut into messages while no fault acts on it (every fault waits
        for a trigger, none has fired here, nothing is held): complete messages that meet no
        trigger are sent on at once; from the first one that does, the general path
        (``Pipe.drain``) takes over."""
        conn = self.conn
        framing = pipe.framing
        assert framing is not None
        view = conn.view
        try:
            n = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            pipe.peer_error(exc)
            return
        if not n:
            pipe.eof = True
            tail = framing.take_pending()
            if tail:
                pipe.pending.append(_Rest(tail))
            pipe.drain()
            return
        if self.is_client:
            conn.record.bytes_upstream += n
        else:
            conn.record.bytes_downstream += n
        messages = framing.feed(bytes(view[:n]))
        if not messages:
            return
        matches = conn.proxy._matches.get(pipe.direction, ())
        passed = 0
        for data in messages:
            for match in matches:  # Message.matches, inline (this runs for every message)
                if match is None or (
                    match in data if type(match) is bytes else match.search(data)  # type: ignore[union-attr]
                ):
                    break
            else:
                passed += 1
                continue
            break
        pipe.messages += len(messages)
        pipe.delivered += passed
        out = messages[0] if passed == 1 else b"".join(messages[:passed])
        if out:
            size = len(out)
            pipe.offset += size
            dst = self.peer
            assert dst is not None
            try:
                sent = dst.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                pipe.peer_error(exc)
                return
            if sent < size:
                pipe.push(0.0, memoryview(out)[sent:])
                pipe.write_blocked = True
                conn.update()
        if passed < len(messages):
            pipe.pending.extend(messages[passed:])
            pipe.drain()

    def on_reactor_error(self, exc: BaseException) -> None:
        conn = self.conn
        conn.proxy._record_error(conn.index, exc)
        conn.abort("error", "proxy error")

    def forward(self, pipe: Pipe) -> None:
        """The no-fault path: nothing queued, so what arrives is sent on at once.

        It reads into a reused buffer: a fresh 256 KiB ``bytes`` per ``recv`` would cost an
        ``mmap``, an ``mremap`` and a ``munmap`` (glibc's threshold for ``mmap`` is 128 KiB)
        and a page fault per 4 KiB touched. Small messages use the loop's shared buffer. Once
        a send falls short (a bulk transfer), the pipe gets a buffer of its own, whose unsent
        tail can wait in the queue without a copy: this path runs again only once the queue
        is empty, and the general path reads into fresh ``bytes``.
        """
        conn = self.conn
        dst = self.peer
        assert dst is not None
        view = pipe.buffer if pipe.buffer is not None else conn.view
        try:
            n = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            pipe.peer_error(exc)
            return
        if not n:
            pipe.eof = True
            pipe.fin_queued = True
            pipe.push(0.0, _FIN)
            pipe.flush()
            return
        pipe.offset += n
        if self.is_client:
            conn.record.bytes_upstream += n
        else:
            conn.record.bytes_downstream += n
        try:
            sent = dst.send(view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            pipe.peer_error(exc)
            return
        if sent < n:
            if pipe.buffer is None:
                own = bytearray(_CHUNK)
                own[:n] = view[:n]
                view = pipe.buffer = memoryview(own)
            pipe.push(0.0, view[sent:n])
            pipe.write_blocked = True
            conn.update()
        elif pipe.buffer is not None and n < _BULK:
            pipe.buffer = None  # no longer a bulk transfer
