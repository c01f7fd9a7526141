"""Framings: how a byte stream is cut into messages, for message-aware faults.

A framing tells the :class:`~pytest_netthreads.faults.FaultProxy` where each message of a
protocol ends, so that a fault can act on a message (``faults.Message(framing, match=...)``)
and :meth:`~pytest_netthreads.faults.FaultProxy.hold` can hold messages one by one. The proxy
makes one framing per connection and direction (:meth:`Framing.fresh`) and feeds it the
bytes as they arrive; :meth:`Framing.feed` returns the messages completed so far and keeps
the partial tail.

Built in: :class:`Lines`, :class:`LengthPrefixed`, :class:`HTTP` (HTTP/1.1),
:class:`RESP` (Redis) and :class:`TLSRecords` (TLS records, read without decrypting). A
framing of your own is a subclass of :class:`Framing` that implements :meth:`Framing.measure`.
"""

from __future__ import annotations

import copy
import re
import struct
from typing import ClassVar, Union


class FramingError(ValueError):
    """The stream cannot be cut into messages: a message over the framing's ``max_size``, or
    bytes that are not the protocol. Raised in the proxy, it resets that connection and fails
    the test as a :class:`~pytest_netthreads.faults.ProxyError`."""


Buffer = Union[bytes, bytearray]  # noqa: UP007 (a runtime alias)


class Framing:
    """Base class of framings: buffers a stream and cuts it into messages.

    A subclass implements :meth:`measure`; it may keep state across calls (a parser), then
    clears it in :meth:`reset`. Its ``repr`` names it in the fault log and decides equality:
    two framings are equal when their class and ``repr`` are (a connection's direction has
    one framing, so every trigger and hold on it must use equal ones).

    Args:
        max_size: the largest message, in bytes (1 MiB by default). A longer one, or more
            than this many bytes of a message still incomplete, raises :class:`FramingError`
            rather than buffering without bound.
    """

    default_max_size: ClassVar[int] = 1 << 20

    def __init__(self, *, max_size: int = 1 << 20) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int):
            raise TypeError(f"max_size must be an int >= 1 (bytes), got {max_size!r}")
        if max_size < 1:
            raise ValueError(f"max_size must be an int >= 1 (bytes), got {max_size!r}")
        self.max_size = max_size
        self._tail: bytes = b""

    def measure(self, buffer: Buffer, start: int) -> int | None:
        """Where the message that begins at ``buffer[start]`` ends: the index just past its
        last byte, or ``None`` if ``buffer`` does not hold all of it yet.

        Raise :class:`FramingError` for bytes that are not the protocol.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement measure()")

    def feed(self, data: Buffer) -> list[bytes]:
        """Add ``data`` to the stream; return the messages it completed (oldest first)."""
        buf: Buffer = self._tail + data if self._tail else data
        size = len(buf)
        limit = self.max_size
        messages = []
        pos = 0
        while pos < size:
            end = self.measure(buf, pos)
            if end is None:
                if size - pos > limit:
                    raise FramingError(
                        f"{self!r}: a message over max_size={limit} bytes "
                        f"({size - pos} bytes and not complete)"
                    )
                break
            if end <= pos:
                raise FramingError(f"{self!r}: measure() returned {end} for a message at {pos}")
            if end - pos > limit:
                raise FramingError(
                    f"{self!r}: a message of {end - pos} bytes, over max_size={limit}"
                )
            if end > size:
                break
            if end == size and not pos and type(buf) is bytes:
                messages.append(buf)  # the common case, one whole message: no copy
            else:
                messages.append(bytes(buf[pos:end]))
            pos = end
        self._tail = bytes(buf[pos:]) if pos < size else b""
        return messages

    @property
    def pending(self) -> bytes:
        """The bytes of the message not yet complete."""
        return self._tail

    def take_pending(self) -> bytes:
        """Return the partial tail and forget it (the proxy does so when framing stops)."""
        tail, self._tail = self._tail, b""
        self.reset()
        return tail

    def reset(self) -> None:
        """Clear a parser's state (between streams). The base class keeps none.

        :meth:`fresh` copies the framing shallowly, then calls this: assign new objects
        (``self.stack = []``) rather than clearing shared ones."""

    def fresh(self) -> Framing:
        """A framing with the same settings and an empty stream (one per connection and
        direction)."""
        clone = copy.copy(self)
        clone._tail = b""
        clone.reset()
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._size_repr()})"

    def _size_repr(self, sep: str = "") -> str:
        """``max_size=N`` if it is not the default (for a ``repr``)."""
        default = type(self).default_max_size
        return "" if self.max_size == default else f"{sep}max_size={self.max_size}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Framing):
            return NotImplemented
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, got {value!r}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


class Lines(Framing):
    """Messages that end with ``terminator`` (included in the message): ``b"\\n"`` by default,
    ``b"\\r\\n"`` for line protocols such as SMTP or memcached's text commands."""

    def __init__(self, terminator: bytes = b"\n", *, max_size: int = 1 << 20) -> None:
        super().__init__(max_size=max_size)
        self.terminator = _check_bytes(terminator, "terminator")

    def measure(self, buffer: Buffer, start: int) -> int | None:
        found = buffer.find(self.terminator, start)
        return None if found < 0 else found + len(self.terminator)

    def __repr__(self) -> str:
        return f"Lines({self.terminator!r}{self._size_repr(', ')})"


class LengthPrefixed(Framing):
    """Messages that start with a length: a header packed as ``header`` (a :mod:`struct`
    format such as ``"!I"``, 4 bytes big-endian; its first field is the length).

    Args:
        header: the :mod:`struct` format of the header; more fields may follow the length
            (``"!IH"``: a length, then a 2-byte type).
        includes_header: whether the length counts the header's own bytes too.
        max_size: see :class:`Framing`.
    """

    def __init__(
        self, header: str = "!I", *, includes_header: bool = False, max_size: int = 1 << 20
    ) -> None:
        super().__init__(max_size=max_size)
        if not isinstance(header, str):
            raise TypeError(f"header must be a struct format str (e.g. '!I'), got {header!r}")
        try:
            packer = struct.Struct(header)
            first = packer.unpack(bytes(packer.size))[0] if packer.size else None
        except (struct.error, IndexError):
            raise ValueError(
                f"header must be a struct format whose first field is an integer (e.g. '!I'), "
                f"got {header!r}"
            ) from None
        if not isinstance(first, int) or isinstance(first, bool):
            raise ValueError(
                f"header must be a struct format whose first field is an integer (e.g. '!I'), "
                f"got {header!r}"
            )
        if not isinstance(includes_header, bool):
            raise TypeError(f"includes_header must be a bool, got {includes_header!r}")
        self.header = header
        self.includes_header = includes_header
        self._packer = packer

    def measure(self, buffer: Buffer, start: int) -> int | None:
        size = self._packer.size
        if len(buffer) - start < size:
            return None
        length: int = self._packer.unpack_from(buffer, start)[0]
        if length < 0 or (self.includes_header and length < size):
            raise FramingError(f"{self!r}: a header with length {length} at stream byte {start}")
        return start + (length if self.includes_header else size + length)

    def __repr__(self) -> str:
        return (f"LengthPrefixed({self.header!r}, includes_header={self.includes_header}"
                f"{self._size_repr(', ')})")


_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"


class HTTP(Framing):
    """HTTP/1.1 messages, requests or responses: the head (start line and headers) and the
    body (``Content-Length`` bytes, or a ``chunked`` body up to its last chunk and trailers).

    A request without either has no body; so has a response with status 1xx, 204 or 304. A
    response with neither (its body ends when the server closes) cannot be framed and raises
    :class:`FramingError`.

    The framing of one direction does not see the other: a response to ``HEAD`` that
    announces a ``Content-Length`` (as it should) is taken to have that many bytes of body,
    which are the next response's. Do not frame the responses of a client that sends
    ``HEAD`` (framing its requests is fine).
    """

    def measure(self, buffer: Buffer, start: int) -> int | None:
        head_end = buffer.find(_HEAD_END, start)
        if head_end < 0:
            return None
        body = head_end + 4
        lines = bytes(buffer[start:head_end]).split(_CRLF)
        first = lines[0]
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise FramingError(f"{self!r}: a header line without ':' ({line[:80]!r})")
            key = name.strip().lower()
            if key == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise FramingError(f"{self!r}: Content-Length {value.strip()!r}") from None
                if length < 0:
                    raise FramingError(f"{self!r}: Content-Length {length}")
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            return self._chunked_end(buffer, body)
        if length is not None:
            return body + length
        if first.startswith(b"HTTP/"):
            parts = first.split(None, 2)
            status = parts[1] if len(parts) > 1 else b""
            if status[:1] == b"1" or status in (b"204", b"304"):
                return body
            raise FramingError(
                f"{self!r}: a response with neither Content-Length nor a chunked body "
                f"({first[:80]!r}): its body ends at close, so it cannot be framed"
            )
        return body  # a request without a body

    def _chunked_end(self, buffer: Buffer, pos: int) -> int | None:
        while True:
            line_end = buffer.find(_CRLF, pos)
            if line_end < 0:
                return None
            size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise FramingError(f"{self!r}: a chunk size {size_text[:20]!r}") from None
            pos = line_end + 2
            if size == 0:
                break
            pos += size + 2  # the data and its CRLF
            if pos > len(buffer):
                return None
        # Trailers: header lines up to an empty line.
        while True:
            line_end = buffer.find(_CRLF, pos)
            if line_end < 0:
                return None
            if line_end == pos:
                return pos + 2
            pos = line_end + 2

    def __repr__(self) -> str:
        return f"HTTP({self._size_repr()})"


_RESP_LINE = frozenset(b"+-:_,#(")
_RESP_BULK = frozenset(b"$!=")
_RESP_AGGREGATE = frozenset(b"*~>")
_RESP_PAIRS = frozenset(b"%|")


class RESP(Framing):
    """Redis protocol messages (RESP2 and RESP3): each command a client sends, each reply
    (arrays, maps and sets with everything inside them are one message), and inline
    commands (``PING\\r\\n``). Streamed strings (``$?``) are not supported.
    """

    def measure(self, buffer: Buffer, start: int) -> int | None:
        end = self._value_end(buffer, start, 0)
        if end is not None and end > len(buffer):
            return None
        return end

    def _line_end(self, buffer: Buffer, pos: int) -> int | None:
        found = buffer.find(_CRLF, pos)
        return None if found < 0 else found

    def _count(self, buffer: Buffer, pos: int, line_end: int) -> int:
        text = bytes(buffer[pos + 1 : line_end])
        try:
            return int(text)
        except ValueError:
            raise FramingError(f"{self!r}: a length {text[:20]!r} at stream byte {pos}") from None

    def _value_end(self, buffer: Buffer, pos: int, depth: int) -> int | None:
        if depth > 64:
            raise FramingError(f"{self!r}: nested more than 64 deep")
        if pos >= len(buffer):
            return None
        kind = buffer[pos]
        line_end = self._line_end(buffer, pos)
        if line_end is None:
            return None
        after = line_end + 2
        if kind in _RESP_LINE:
            return after
        if kind in _RESP_BULK:
            n = self._count(buffer, pos, line_end)
            return after if n < 0 else after + n + 2
        if kind in _RESP_AGGREGATE or kind in _RESP_PAIRS:
            n = self._count(buffer, pos, line_end)
            if n < 0:
                return after
            items = n * 2 if kind in _RESP_PAIRS else n
            end = after
            for _ in range(items):
                item_end = self._value_end(buffer, end, depth + 1)
                if item_end is None or item_end > len(buffer):
                    return None
                end = item_end
            if kind == ord("|"):  # attributes precede the value they describe
                return self._value_end(buffer, end, depth + 1)
            return end
        if kind in b"\r\n":
            raise FramingError(f"{self!r}: an empty line at stream byte {pos}")
        return after  # an inline command

    def __repr__(self) -> str:
        return f"RESP({self._size_repr()})"


_CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data",
                  24: "heartbeat"}


def _record(content_type: int) -> re.Pattern[bytes]:
    return re.compile(re.escape(bytes([content_type])), re.DOTALL)


def _handshake(msg_type: int) -> re.Pattern[bytes]:
    return re.compile(b"\\x16\\x03[\\x00-\\x04]..%s" % re.escape(bytes([msg_type])), re.DOTALL)


class TLSRecords(Framing):
    """TLS records, read without decrypting: a 5-byte header (content type, version, length)
    and its body. A handshake record's body starts with the handshake message's type.

    Patterns to use as ``match=`` (each ``re.match``-es at the start of a record):
    :attr:`CLIENT_HELLO`, :attr:`SERVER_HELLO`, :attr:`CERTIFICATE` (TLS 1.2; encrypted in
    TLS 1.3), :attr:`HANDSHAKE`, :attr:`CHANGE_CIPHER_SPEC`, :attr:`ALERT`,
    :attr:`APPLICATION_DATA`; :meth:`handshake` and :meth:`record` make others. In TLS 1.3
    every handshake message after the ServerHello travels in ``application_data`` records.
    """

    CHANGE_CIPHER_SPEC: ClassVar[re.Pattern[bytes]] = _record(20)
    ALERT: ClassVar[re.Pattern[bytes]] = _record(21)
    HANDSHAKE: ClassVar[re.Pattern[bytes]] = _record(22)
    APPLICATION_DATA: ClassVar[re.Pattern[bytes]] = _record(23)
    CLIENT_HELLO: ClassVar[re.Pattern[bytes]] = _handshake(1)
    SERVER_HELLO: ClassVar[re.Pattern[bytes]] = _handshake(2)
    CERTIFICATE: ClassVar[re.Pattern[bytes]] = _handshake(11)

    default_max_size: ClassVar[int] = 16384 + 2048 + 5

    def __init__(self, *, max_size: int = 16384 + 2048 + 5) -> None:
        super().__init__(max_size=max_size)

    @classmethod
    def name_of(cls, pattern: object) -> str | None:
        """``"TLSRecords.SERVER_HELLO"`` for one of the class's patterns (for reprs)."""
        for name in ("CLIENT_HELLO", "SERVER_HELLO", "CERTIFICATE", "HANDSHAKE",
                     "CHANGE_CIPHER_SPEC", "ALERT", "APPLICATION_DATA"):
            if getattr(cls, name) is pattern:
                return f"TLSRecords.{name}"
        return None

    @staticmethod
    def handshake(msg_type: int) -> re.Pattern[bytes]:
        """A pattern for a handshake record whose message has type ``msg_type`` (1 to 255)."""
        if isinstance(msg_type, bool) or not isinstance(msg_type, int):
            raise TypeError(f"msg_type must be an int from 0 to 255, got {msg_type!r}")
        if not 0 <= msg_type <= 255:
            raise ValueError(f"msg_type must be an int from 0 to 255, got {msg_type!r}")
        return _handshake(msg_type)

    @staticmethod
    def record(content_type: int) -> re.Pattern[bytes]:
        """A pattern for a record of ``content_type`` (20 to 24)."""
        if isinstance(content_type, bool) or not isinstance(content_type, int):
            raise TypeError(f"content_type must be an int from 20 to 24, got {content_type!r}")
        if content_type not in _CONTENT_TYPES:
            raise ValueError(f"content_type must be an int from 20 to 24, got {content_type!r}")
        return _record(content_type)

    def measure(self, buffer: Buffer, start: int) -> int | None:
        if len(buffer) - start < 5:
            return None
        kind = buffer[start]
        if kind not in _CONTENT_TYPES or buffer[start + 1] != 3:
            head = bytes(buffer[start : start + 5])
            raise FramingError(f"{self!r}: not a TLS record header at stream byte {start}: "
                               f"{head!r}")
        return start + 5 + int.from_bytes(buffer[start + 3 : start + 5], "big")

    def __repr__(self) -> str:
        return f"TLSRecords({self._size_repr()})"


__all__ = [
    "HTTP",
    "RESP",
    "Framing",
    "FramingError",
    "LengthPrefixed",
    "Lines",
    "TLSRecords",
]
