"""What each kind of proxy fault does: one behaviour class a kind, and the table that maps them.

A fault spec (``specs.py``) is data; its behaviour is here. When a connection's pipe (one
direction of one connection, ``_connection.py``) first meets a fault that applies to it, it
draws whether the fault applies (``probability``) and, if so, makes the fault's behaviour
for that pipe: ``BEHAVIOURS[type(fault)](fault, pipe)`` (or the behaviour of its nearest
base class in the table). The pipe then calls the hooks below at fixed points, for its
behaviours in the order their faults were added. Every hook does nothing by default; a kind
overrides the ones it needs:

================  ==================================================  ====================
hook              asked                                               used by
================  ==================================================  ====================
``dial_wait``     before the target is dialed (``connect`` kinds)     HoldConnect,
                                                                      DelayConnect
``stop_at``       before each read: a read ends at this stream        Timeout, Stall,
                  offset, so an action lands exactly there            ResetPeer, LimitData
``stops_reading`` whether the pipe may read its source now            Stall
``drops``         for each chunk read: drop it?                       Timeout
``on_data``       for each chunk kept: change it, delay it, cut or    Corrupt, Latency,
                  pace it (:class:`Chunk`)                            Slice, Bandwidth
``on_mark``       kinds with ``marks = True``: a mark is queued       ResetPeer, LimitData
                  behind the data once the stream reaches
                  ``stop_at()``; this runs when it leaves the queue
``close_delay``   when the source ends (EOF): hold the FIN back       SlowClose
================  ==================================================  ====================

Hooks run in the kit's event loop, under its lock, and must not block. A pipe's behaviours
share its seeded generator ``pipe.rng``; a seed replays a run because they draw from it in
the same order for the same input: hooks run in the order of the faults, and every
``on_data`` before the chunk is cut (``Chunk.cut``).

Under a message trigger (``fault.on``, a :class:`~.specs.Message`) a behaviour is made as
above but acts only once the pipe fired it (:meth:`Behaviour.fire`): its hooks run from
then on, its own offsets count from ``base`` (the firing message's offset), and ``on_data``
sees only the chunks of its ``window`` (the firing message) unless the kind ``persists``.

A new fault kind is a spec class in ``specs.py``, a behaviour class here and its line in
:data:`BEHAVIOURS` (see "Adding a fault" in ``docs/faults.rst``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from . import specs

if TYPE_CHECKING:
    from ._connection import Pipe

F = TypeVar("F", bound=specs.ProxyFault)

Pieces = list[tuple[float, int]]
"""How a chunk is cut: ``(delay after the first piece, length)`` for each piece."""


class Chunk:
    """One piece of data read from a pipe's source, while its behaviours shape it.

    After every ``on_data`` hook the pipe cuts ``data`` with ``cut`` (one piece if ``None``),
    delays the pieces so that none leaves before ``ready`` nor before the one read before
    it, and queues them, through ``pace`` if it is set.
    """

    __slots__ = ("cut", "data", "now", "offset", "pace", "rate", "ready")

    def __init__(self, data: bytes, offset: int, now: float) -> None:
        self.data: bytes | bytearray = data
        self.offset = offset
        """Bytes of this direction's stream read before it."""
        self.now = now
        """``time.monotonic()`` when it was read."""
        self.ready = now
        """The earliest it may be sent."""
        self.cut: Callable[[int], Pieces] | None = None
        """Cuts ``len(data)`` bytes into :data:`Pieces`."""
        self.rate: float | None = None
        """Bytes a second, for ``pace``."""
        self.pace: Callable[[memoryview, float, Chunk], None] | None = None
        """Queues one piece, due at the given time, at ``rate``."""


class Behaviour(Generic[F]):
    """How one fault acts on one pipe. Each hook's default does nothing."""

    connect: ClassVar[bool] = False
    """A connection fault: drawn once per connection (from the upstream generator, whatever
    its direction) and asked only :meth:`dial_wait`."""
    marks: ClassVar[bool] = False
    """Queue a mark behind the data once the stream reaches :meth:`stop_at` (then
    :meth:`on_mark`)."""

    persists: ClassVar[bool] = False
    """Under a message trigger (``on=``): once fired, act on the rest of the stream from the
    first message that fired it (kinds that end the stream). Otherwise each firing message
    gets the fault anew: ``base`` moves to it and ``on_data`` sees that message only."""

    def __init__(self, fault: F, pipe: Pipe) -> None:
        self.fault = fault
        self.pipe = pipe
        self.logged = False  # see log_once
        self.marked = False  # set by the pipe once it queued the mark
        self.mark_offset: int | None = None  # where, if the pipe knew it exactly
        self.base = 0
        """Where the fault's own offsets (``after_bytes``...) count from: 0, or under a
        message trigger the offset of the message that fired it."""
        self.fired = fault.on is None
        """Whether it acts: always without a trigger, once fired with one."""
        self.window: tuple[float, float] | None = None
        """Under a trigger: the stream offsets whose chunks ``on_data`` sees."""

    def fire(self, base: int, end: float) -> None:
        """A message trigger fired: act from stream offset ``base`` (on data up to ``end``)."""
        if self.persists and self.fired:
            return
        self.fired = True
        self.base = base
        self.window = (base, end)

    def log(self, action: str, offset: int | None = None, detail: str = "") -> None:
        """Add ``action`` to the proxy's fault log, at ``offset`` (default: the pipe's), with
        ``detail``: what the fault drew (so that a seed's replay can be checked on the log)."""
        pipe = self.pipe
        pipe.conn.event(pipe.direction, pipe.offset if offset is None else offset, action,
                        self.fault, detail)

    def log_once(self, action: str, offset: int | None = None, detail: str = "") -> None:
        """:meth:`log`, the first time only (for this fault on this pipe)."""
        if not self.logged:
            self.logged = True
            self.log(action, offset, detail)

    # -- hooks ------------------------------------------------------------------------------

    def dial_wait(self) -> float | None:
        """Seconds to wait before dialing the target, ``math.inf`` to hold while the fault is
        active, ``None`` for no effect. The longest wait of a connection's faults counts."""
        return None

    def stop_at(self) -> int | None:
        """A stream offset no read may cross (the next read starts there)."""
        return None

    def stops_reading(self) -> bool:
        """Whether the pipe must not read its source now (the sender's buffers fill)."""
        return False

    def drops(self, offset: int) -> bool:
        """Whether the chunk read at ``offset`` is dropped (no later hook sees it)."""
        return False

    def on_data(self, chunk: Chunk) -> None:
        """Shape a chunk read from the source (see :class:`Chunk`)."""

    def on_mark(self) -> None:
        """The mark left the queue (``marks``): the data before it was sent."""

    def close_delay(self) -> float:
        """Seconds to hold back the FIN when the source ended (the longest counts)."""
        return 0.0


# -- the fault kinds ----------------------------------------------------------------------------


class LatencyBehaviour(Behaviour[specs.Latency]):
    def on_data(self, chunk: Chunk) -> None:
        fault = self.fault
        jitter = self.pipe.rng.uniform(-fault.jitter, fault.jitter) if fault.jitter else 0.0
        delay = max(0.0, fault.seconds + jitter)
        chunk.ready += delay
        detail = f"delay {delay:.6f}s"
        if self.logged and fault.jitter:  # each chunk's own draw
            self.log("delay", chunk.offset, detail)
        self.log_once("applied", chunk.offset, detail)


_BURST = 0.02  # seconds of data Bandwidth may send at once to catch up


class BandwidthBehaviour(Behaviour[specs.Bandwidth]):
    def on_data(self, chunk: Chunk) -> None:
        self.log_once("applied", chunk.offset)
        rate = self.fault.bytes_per_second
        if chunk.rate is None or rate < chunk.rate:  # the lowest rate counts
            chunk.rate = rate
            chunk.pace = self.pace

    def pace(self, piece: memoryview, at: float, chunk: Chunk) -> None:
        """Queue ``piece`` in steps of 10 ms worth of data, from a token bucket ``_BURST`` deep:
        after the loop was kept from running (a busy machine) the stream may catch up that
        much, no more. The bucket's clock is the pipe's (shared by its Bandwidth faults)."""
        pipe = self.pipe
        rate = chunk.rate
        assert rate is not None
        step = max(1, int(rate * 0.01))
        pos, end = 0, len(piece)
        while pos < end:
            n = min(step, end - pos)
            slot = max(pipe.paced_until, chunk.now - _BURST)
            at = max(at, slot)
            pipe.push(at, piece[pos : pos + n])
            pipe.paced_until = slot + n / rate
            pipe.last_ready = at
            pos += n


_SHOWN_SIZES = 32  # a "cut" log event shows this many piece sizes at most


class SliceBehaviour(Behaviour[specs.Slice]):
    def on_data(self, chunk: Chunk) -> None:
        self.log_once("applied", chunk.offset)
        if chunk.cut is None:  # the first Slice cuts
            offset = chunk.offset
            chunk.cut = lambda length: self.pieces(length, offset)

    def pieces(self, length: int, offset: int | None = None) -> Pieces:
        fault, rng = self.fault, self.pipe.rng
        pieces: Pieces = []
        pos, step = 0, 0.0
        while pos < length:
            size = fault.size
            if fault.variation:
                size += rng.randint(-fault.variation, fault.variation)
            pieces.append((step * fault.delay, min(size, length - pos)))
            pos += size
            step += 1.0
        if fault.variation:  # the sizes drawn
            sizes = [n for _, n in pieces]
            shown = ",".join(map(str, sizes[:_SHOWN_SIZES]))
            more = f",... ({len(sizes)} pieces)" if len(sizes) > _SHOWN_SIZES else ""
            self.log("cut", offset, f"sizes {shown}{more}")
        return pieces


class CorruptBehaviour(Behaviour[specs.Corrupt]):
    def on_data(self, chunk: Chunk) -> None:
        fault, rng = self.fault, self.pipe.rng
        data = chunk.data
        buf = chunk.data = data if isinstance(data, bytearray) else bytearray(data)
        offset = chunk.offset
        end = offset + len(buf)
        flipped = []  # (stream offset, the byte before the flip)
        base = self.base
        for where in fault.offsets:
            where += base
            if offset <= where < end:
                flipped.append((where, buf[where - offset]))
                buf[where - offset] ^= fault.mask
        if fault.rate > 0:
            for i in range(len(buf)):
                if rng.random() < fault.rate:
                    flipped.append((offset + i, buf[i]))
                    buf[i] ^= fault.mask
        for where, before in flipped:
            self.log("corrupt", where, f"0x{before:02x}->0x{before ^ fault.mask:02x}")


class TimeoutBehaviour(Behaviour[specs.Timeout]):
    persists = True

    def stop_at(self) -> int:
        return self.base + self.fault.after_bytes

    def drops(self, offset: int) -> bool:
        if offset < self.base + self.fault.after_bytes:
            return False
        self.log_once("drop from here", offset)
        return True


class StallBehaviour(Behaviour[specs.Stall]):
    persists = True

    def stop_at(self) -> int:
        return self.base + self.fault.after_bytes

    def stops_reading(self) -> bool:
        if self.pipe.offset < self.base + self.fault.after_bytes:
            return False
        self.log_once("stall")
        return True


class ResetPeerBehaviour(Behaviour[specs.ResetPeer]):
    marks = True
    persists = True

    def stop_at(self) -> int:
        return self.base + self.fault.after_bytes

    def on_mark(self) -> None:
        self.log("reset", self.mark_offset)
        self.pipe.conn.abort("fault-reset", None)


class LimitDataBehaviour(Behaviour[specs.LimitData]):
    marks = True
    persists = True

    def stop_at(self) -> int:
        return self.base + self.fault.nbytes

    def on_mark(self) -> None:
        pipe = self.pipe
        self.log("limit reached: FIN", self.mark_offset)
        pipe.discard = True
        pipe.clear()
        pipe.send_fin()
        other = pipe.other
        other.discard = True
        if not other.fin_sent:
            other.clear()
            other.send_fin()


class SlowCloseBehaviour(Behaviour[specs.SlowClose]):
    persists = True

    def close_delay(self) -> float:
        return self.fault.seconds


class HoldConnectBehaviour(Behaviour[specs.HoldConnect]):
    connect = True

    def dial_wait(self) -> float:
        return math.inf


class DelayConnectBehaviour(Behaviour[specs.DelayConnect]):
    connect = True

    def dial_wait(self) -> float:
        return self.fault.seconds


BEHAVIOURS: dict[type[specs.ProxyFault], type[Behaviour[Any]]] = {
    specs.Latency: LatencyBehaviour,
    specs.Bandwidth: BandwidthBehaviour,
    specs.Slice: SliceBehaviour,
    specs.Corrupt: CorruptBehaviour,
    specs.Timeout: TimeoutBehaviour,
    specs.Stall: StallBehaviour,
    specs.ResetPeer: ResetPeerBehaviour,
    specs.LimitData: LimitDataBehaviour,
    specs.SlowClose: SlowCloseBehaviour,
    specs.HoldConnect: HoldConnectBehaviour,
    specs.DelayConnect: DelayConnectBehaviour,
}
"""The behaviour of each kind of fault (a subclass of a kind behaves as that kind)."""


def behaviour_of(fault: object) -> type[Behaviour[Any]]:
    """The behaviour class for ``fault``; ``TypeError`` for anything the proxy cannot apply."""
    if not isinstance(fault, specs.ProxyFault):
        raise TypeError(
            f"faults must be proxy faults (faults.Latency(...), faults.ResetPeer(...)...), "
            f"got {fault!r}"
        )
    for cls in type(fault).__mro__:
        kind = BEHAVIOURS.get(cls)
        if kind is not None:
            return kind
    raise TypeError(
        f"faults: {type(fault).__name__} has no proxy behaviour (a fault kind needs one in "
        f"faults/_behaviour.py), got {fault!r}"
    )
