"""Fault specifications: small frozen dataclasses, validated when they are made.

Proxy faults (applied by :class:`~pytest_netthreads.faults.FaultProxy`) each carry a
``direction`` (``"downstream"``: server to client, ``"upstream"``: client to server, or
``"both"``) and a ``probability``: the chance, drawn once per connection and direction from
that connection's seeded generator, that the fault applies to it.

In-process faults (applied by :class:`~pytest_netthreads.faults.SocketFaults` to the sockets
the code under test creates) script what ``recv``/``send`` return and when they raise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union

from .._runtime import values
from .framing import Framing, TLSRecords

Direction = Literal["downstream", "upstream", "both"]
_DIRECTIONS = ("downstream", "upstream", "both")


def _check_number(name: str, value: object, *, minimum: float = 0.0, maximum: float | None = None,
                  allow_min: bool = True) -> None:
    values.number(value, name, minimum=minimum, maximum=maximum, above_minimum=not allow_min)


def _check_int(name: str, value: object, *, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


MessageScope = Literal["connection", "proxy"]
_SCOPES = ("connection", "proxy")


@dataclass(frozen=True)
class Message:
    """A trigger: a fault given ``on=Message(...)`` acts when a message matches.

    The proxy cuts the stream of each connection and direction into messages with
    ``framing`` (:mod:`~pytest_netthreads.faults.framing`); a message *counts* if it
    matches ``match`` (every message does without one). The trigger fires on every message
    that counts, or with ``nth`` on the ``nth`` one only (counted per connection, or over
    all the proxy's connections with ``scope="proxy"``).

    When it fires, the fault starts acting on that message: its byte offsets
    (``after_bytes``, ``nbytes``, ``offsets``) count from the message's first byte (from just
    after its last byte with ``at="end"``), and a fault that shapes data (``Latency``,
    ``Slice``, ``Bandwidth``, ``Corrupt``) acts on that message only (with ``at="end"``, on
    the next one). A fault that ends the stream (``ResetPeer``, ``LimitData``, ``Timeout``,
    ``Stall``) stays in force once fired.

    Args:
        framing: how to cut the stream (``faults.Lines()``, ``faults.RESP()``...).
        match: ``bytes`` the message contains, or a compiled ``bytes`` regex it
            ``search``-es; ``None``: every message.
        nth: fire on the ``nth`` message that counts only (from 1); ``None``: on each.
        scope: where ``nth`` counts: ``"connection"`` (each connection and direction on its
            own) or ``"proxy"`` (all connections, per direction).
        direction: the direction watched, ``"upstream"`` or ``"downstream"``; ``None``: the
            fault's own. A fault triggered by the other direction acts on its own stream from
            the point it has reached when the trigger fires, on everything after.
        at: ``"start"`` or ``"end"`` of the message, where the fault's offsets count from.
    """

    framing: Framing
    match: bytes | re.Pattern[bytes] | None = None
    nth: int | None = None
    scope: MessageScope = "connection"
    direction: Literal["upstream", "downstream"] | None = None
    at: Literal["start", "end"] = "start"

    def __post_init__(self) -> None:
        if not isinstance(self.framing, Framing):
            raise TypeError(
                f"framing must be a Framing (faults.Lines(), faults.RESP()...), "
                f"got {self.framing!r}"
            )
        match = self.match
        if isinstance(match, re.Pattern):
            if not isinstance(match.pattern, bytes):
                raise TypeError(f"match must be a bytes regex (re.compile(b'...')), got {match!r}")
        elif match is not None:
            if not isinstance(match, bytes):
                raise TypeError(f"match must be bytes, a compiled bytes regex or None, "
                                f"got {match!r}")
            if not match:
                raise ValueError("match must not be empty bytes (use None for every message)")
        if self.nth is not None:
            _check_int("nth", self.nth, minimum=1)
        if self.scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {self.scope!r}")
        if self.direction not in (None, "upstream", "downstream"):
            raise ValueError(
                f"direction must be 'upstream', 'downstream' or None, got {self.direction!r}"
            )
        if self.at not in ("start", "end"):
            raise ValueError(f"at must be 'start' or 'end', got {self.at!r}")

    def __repr__(self) -> str:
        parts = [repr(self.framing)]
        for name, default in (("match", None), ("nth", None), ("scope", "connection"),
                              ("direction", None), ("at", "start")):
            value = getattr(self, name)
            if value != default:
                shown = TLSRecords.name_of(value) if name == "match" else None
                parts.append(f"{name}={shown or repr(value)}")
        return f"Message({', '.join(parts)})"

    def matches(self, message: bytes) -> bool:
        """Whether ``message`` counts (contains ``match``, or its regex finds a match)."""
        match = self.match
        if match is None:
            return True
        if isinstance(match, bytes):
            return match in message
        return match.search(message) is not None


def tls_client_hello(*, at: Literal["start", "end"] = "start") -> Message:
    """A trigger: the client's TLS ClientHello record (upstream), read without decrypting.

    ``faults.Timeout(direction="downstream", on=faults.tls_client_hello())``: the
    ClientHello reaches the server, nothing reaches the client after it (a handshake that
    stalls).
    """
    return Message(TLSRecords(), match=TLSRecords.CLIENT_HELLO, direction="upstream", at=at)


def tls_server_hello(*, at: Literal["start", "end"] = "start") -> Message:
    """A trigger: the server's TLS ServerHello record (downstream).

    ``faults.ResetPeer(on=faults.tls_server_hello(at="end"))``: the client gets the
    ServerHello, then a reset; ``faults.Corrupt(offsets=(20,), on=faults.tls_server_hello())``
    flips a byte of it.
    """
    return Message(TLSRecords(), match=TLSRecords.SERVER_HELLO, direction="downstream", at=at)


@dataclass(frozen=True)
class ProxyFault:
    """Base class of the faults a :class:`~pytest_netthreads.faults.FaultProxy` applies.

    Its two fields are keyword-only (``Latency(0.05, direction="both")``), so a subclass
    declares only its own fields, which keep their positional order. A subclass may give
    ``direction`` another default by declaring it again with ``field(default=...,
    kw_only=True)``. What the proxy does with a fault is its behaviour, in
    ``faults/_behaviour.py`` (see "Adding a fault" in the docs).
    """

    direction: Direction = field(default="downstream", kw_only=True)
    """``"downstream"`` (server to client), ``"upstream"`` (client to server) or ``"both"``."""
    probability: float = field(default=1.0, kw_only=True)
    """The chance that the fault applies to a connection and direction (drawn once, from the
    connection's seeded generator)."""
    on: Message | None = field(default=None, kw_only=True)
    """A trigger (:class:`Message`): the fault acts only once a message matches; ``None``:
    from the start of the stream."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Set before @dataclass runs, which then keeps it ("if the class already defines
        # __repr__, this parameter is ignored"): see _repr.
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = _repr  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {self.direction!r}")
        _check_number("probability", self.probability, maximum=1.0)
        if self.on is not None and not isinstance(self.on, Message):
            raise TypeError(
                f"on must be a trigger such as faults.Message(framing, match=...) or None, "
                f"got {self.on!r}"
            )

    @property
    def chance(self) -> float:
        """``probability`` as a float."""
        return float(self.probability)

    def applies_to(self, direction: str) -> bool:
        """Whether the fault acts on the ``"upstream"`` or ``"downstream"`` byte stream."""
        mine = self.direction
        return mine == "both" or mine == direction


def _repr(fault: ProxyFault) -> str:
    """The dataclass repr with the keyword-only fields last, where they always were.

    Fault logs and failure reports show faults by their repr
    (``ResetPeer(after_bytes=4, direction='downstream', probability=1.0)``).
    """
    shown = [f for f in fields(fault) if f.repr and not (f.name == "on" and fault.on is None)]
    shown.sort(key=lambda f: bool(f.kw_only))  # stable: each group keeps its order
    inside = ", ".join(f"{f.name}={getattr(fault, f.name)!r}" for f in shown)
    return f"{type(fault).__qualname__}({inside})"


@dataclass(frozen=True)
class ConnectFault(ProxyFault):
    """Base class of the faults that act on setting up a connection, before any byte flows.

    Such a fault acts once per connection, whatever its ``direction`` (accepted and shown for
    compatibility, ``"both"`` by default; it is not used); ``probability`` is drawn once per
    connection.
    """

    direction: Direction = field(default="both", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.on is not None:
            raise ValueError(
                f"on: {type(self).__name__} acts before the target is dialed, when no message "
                f"has been seen; a message trigger cannot apply to it"
            )


@dataclass(frozen=True)
class Latency(ProxyFault):
    """Deliver each piece of data ``seconds`` (plus or minus up to ``jitter``) after it arrived.

    Order is kept: a piece is never delivered before the one read before it.
    """

    seconds: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number("seconds", self.seconds, maximum=3600.0)
        _check_number("jitter", self.jitter, maximum=3600.0)


@dataclass(frozen=True)
class Bandwidth(ProxyFault):
    """Forward at most ``bytes_per_second``, paced in pieces of about 10 ms each.

    A token bucket 20 ms deep: after the proxy thread could not run for a while (a busy
    machine) the stream catches up by at most 20 ms worth of data; idle time earns nothing.
    The rate is from 1 byte to 10**12 bytes (1 TB) a second; to stop data altogether, use
    :class:`Stall` or :class:`Timeout`.
    """

    bytes_per_second: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number("bytes_per_second", self.bytes_per_second, minimum=1.0, maximum=1e12)


@dataclass(frozen=True)
class Slice(ProxyFault):
    """Deliver data in pieces of ``size`` bytes (plus or minus ``variation``), ``delay`` apart.

    Each piece is a separate ``send``; with a ``delay`` the receiver's reads see the pieces
    separately (without one the kernel may merge pieces that arrive together).
    """

    size: int
    variation: int = 0
    delay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("size", self.size, minimum=1)
        _check_int("variation", self.variation, minimum=0)
        if self.variation >= self.size:
            raise ValueError(
                f"variation must be smaller than size ({self.size}), got {self.variation}"
            )
        _check_number("delay", self.delay, maximum=3600.0)


@dataclass(frozen=True)
class Timeout(ProxyFault):
    """Forward ``after_bytes``, then drop everything and hold the connection open.

    The peer sees silence (its read times out); reading goes on, so its sends succeed.
    """

    after_bytes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("after_bytes", self.after_bytes)


@dataclass(frozen=True)
class Stall(ProxyFault):
    """Forward ``after_bytes``, then stop reading: the sender's buffers fill and it blocks."""

    after_bytes: int = 0
    direction: Direction = field(default="upstream", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("after_bytes", self.after_bytes)


@dataclass(frozen=True)
class ResetPeer(ProxyFault):
    """Forward ``after_bytes``, then reset both sides with a real RST (``SO_LINGER`` 0).

    Acts on live connections too: adding it resets those already past ``after_bytes``.
    """

    after_bytes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("after_bytes", self.after_bytes)


@dataclass(frozen=True)
class LimitData(ProxyFault):
    """Forward ``nbytes``, then close gracefully: both peers get a FIN (``recv`` returns b"")."""

    nbytes: int

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("nbytes", self.nbytes)


@dataclass(frozen=True)
class SlowClose(ProxyFault):
    """Pass a peer's FIN (or close) on only ``seconds`` after it arrived."""

    seconds: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number("seconds", self.seconds, maximum=3600.0)


@dataclass(frozen=True)
class Corrupt(ProxyFault):
    """Flip bits: XOR ``mask`` into the bytes at stream ``offsets`` and, with ``rate``, others.

    ``offsets`` count from the start of the connection's stream in that direction, so a
    given corruption is exactly reproducible; ``rate`` draws from the connection's seeded
    generator, so it is reproducible from the proxy seed.
    """

    offsets: tuple[int, ...] = ()
    rate: float = 0.0
    mask: int = 0xFF

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.offsets, tuple):
            raise TypeError(f"offsets must be a tuple of ints >= 0, got {self.offsets!r}")
        for offset in self.offsets:
            _check_int("offsets[...]", offset)
        _check_number("rate", self.rate, maximum=1.0)
        _check_int("mask", self.mask, minimum=1)
        if self.mask > 0xFF:
            raise ValueError(f"mask must be an int from 1 to 255, got {self.mask}")
        if not self.offsets and self.rate == 0:
            raise ValueError("Corrupt needs offsets=(...) or a rate > 0")


@dataclass(frozen=True)
class DelayConnect(ConnectFault):
    """Accept, then dial the target only ``seconds`` later (a slow connection set-up)."""

    seconds: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number("seconds", self.seconds, maximum=3600.0)


@dataclass(frozen=True)
class HoldConnect(ConnectFault):
    """Accept, then hold: the target is not dialed and nothing is forwarded while it is active.

    Connections held when the fault is removed go on normally (they dial the target then).
    """


# -- in-process socket faults ---------------------------------------------------------------


def _check_sizes(name: str, sizes: object) -> tuple[int, ...]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"{name} must be a sequence of ints >= 1, got {sizes!r}")
    for size in sizes:
        _check_int(f"{name}[...]", size, minimum=1)
    if not sizes:
        raise ValueError(f"{name} must hold at least one size")
    return tuple(sizes)


@dataclass(frozen=True)
class RecvChunks:
    """Cut the received byte stream at fixed boundaries: ``recv`` never returns across one.

    The boundaries are stream offsets (``sizes`` are the lengths of the pieces), so a read
    that the kernel happened to cut shorter does not shift them. After the last size reads
    are unlimited, or with ``cycle=True`` the sizes start over.
    """

    sizes: Sequence[int]
    cycle: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", _check_sizes("sizes", self.sizes))


@dataclass(frozen=True)
class ShortSends:
    """The n-th ``send`` call sends at most ``sizes[n]`` bytes (and returns that count).

    ``sendall`` still sends everything, as a series of short sends.
    """

    sizes: Sequence[int]
    cycle: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", _check_sizes("sizes", self.sizes))


ExceptionSpec = Union[BaseException, type[BaseException]]  # noqa: UP007 (a runtime alias)


def _check_error(
    error: object, after_bytes: object, at_call: object
) -> None:
    ok_type = isinstance(error, type) and issubclass(error, BaseException)
    if not (ok_type or isinstance(error, BaseException)):
        raise TypeError(
            f"error must be an exception class or instance (e.g. TimeoutError), got {error!r}"
        )
    if (after_bytes is None) == (at_call is None):
        raise ValueError("give exactly one of after_bytes=N or at_call=K")
    if after_bytes is not None:
        _check_int("after_bytes", after_bytes)
    if at_call is not None:
        _check_int("at_call", at_call, minimum=1)


@dataclass(frozen=True)
class RecvError:
    """``recv`` raises ``error`` once ``after_bytes`` were received, or at call ``at_call``.

    ``at_call`` counts from 1. Reads are cut so that exactly ``after_bytes`` arrive first.
    Typical errors: ``TimeoutError`` (``socket.timeout``), ``ConnectionResetError``.
    """

    error: ExceptionSpec
    after_bytes: int | None = None
    at_call: int | None = None

    def __post_init__(self) -> None:
        _check_error(self.error, self.after_bytes, self.at_call)


@dataclass(frozen=True)
class SendError:
    """``send``/``sendall`` raise ``error`` once ``after_bytes`` were sent, or at ``at_call``.

    Typical errors: ``BrokenPipeError``, ``ConnectionResetError``, ``TimeoutError``.
    """

    error: ExceptionSpec
    after_bytes: int | None = None
    at_call: int | None = None

    def __post_init__(self) -> None:
        _check_error(self.error, self.after_bytes, self.at_call)


SocketFault = Union[RecvChunks, ShortSends, RecvError, SendError]  # noqa: UP007

__all__ = [
    "Bandwidth",
    "ConnectFault",
    "Corrupt",
    "DelayConnect",
    "Direction",
    "HoldConnect",
    "Latency",
    "LimitData",
    "Message",
    "MessageScope",
    "ProxyFault",
    "RecvChunks",
    "RecvError",
    "ResetPeer",
    "SendError",
    "ShortSends",
    "Slice",
    "SlowClose",
    "SocketFault",
    "Stall",
    "Timeout",
    "tls_client_hello",
    "tls_server_hello",
]
