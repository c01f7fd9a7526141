"""Reference connection handlers.

Each is a callable ``handler(conn)`` for :class:`~pytest_netthreads.ThreadedServer`. The
simple ones (echo, sink, blackhole, close, reset) also carry a non-blocking implementation
(given with :func:`~pytest_netthreads.servers.core.native`) used with
``concurrency="selector"``.
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._runtime.reactor import EVENT_READ, EVENT_WRITE
from .core import NativeConnection, native
from .records import ServerConnection

_CHUNK = 256 * 1024
# Reads start at _SMALL, under glibc's default 128 KiB mmap threshold with the bytes header:
# a 256 KiB bytes object is mmap()ed, mremap()ed to its length and munmap()ed on every read,
# which cut small-message round trips by about a third here. A read that fills _SMALL means a
# stream is flowing, and the next ones take _CHUNK (fewer system calls per byte for bulk).
_SMALL = 128 * 1024 - 64
_LINGER_ZERO = struct.pack("ii", 1, 0)


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int (not a bool) from ``minimum`` up, else the error naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value >= sys.maxsize:  # it is a read size, plus one
        raise ValueError(f"{name} must be less than sys.maxsize, got {value}")
    return value


def _as_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, got {type(value).__name__}")


def _drain_until_eof(conn: ServerConnection) -> None:
    """Read and discard until the client closes (or the server stops)."""
    buf = bytearray(65536)
    while conn.recv_into(buf):
        pass


# -- echo ------------------------------------------------------------------------------


class _NativeEcho(NativeConnection):
    """Echo inside the reactor. Backpressure: while output is pending, stop reading."""

    pending: memoryview | None = None
    size: int = _SMALL  # the next read's size (see _SMALL)

    def on_event(self, mask: int) -> None:
        if self.pending is None:
            if self._echo_once():
                self.reactor.modify_locked(self.sock, EVENT_WRITE, self)
            return
        if not mask & EVENT_WRITE or not self._flush():
            return
        # Drained: read on at once instead of waiting for another turn of the loop, and stay
        # registered for writing if the output backs up again (the bulk-transfer case).
        if not self._echo_once() and not self.closed:
            self.reactor.modify_locked(self.sock, EVENT_READ, self)

    def _echo_once(self) -> bool:
        """Read once and echo it; True when output is left pending."""
        # recv() into a fresh bytes object measured faster here than recv_into() a reused
        # buffer (bench/bench_servers.py), and a backed-up tail needs no copy.
        try:
            data = self.sock.recv(self.size)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.close("peer-reset")
            return False
        record = self.record
        if not data:
            record.saw_eof = True
            self.close("peer-eof")
            return False
        n = len(data)
        self.size = _CHUNK if n >= _SMALL else _SMALL
        record.bytes_in += n
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close("peer-reset")
            return False
        record.bytes_out += sent
        if sent == n:
            return False
        self.pending = memoryview(data)[sent:]
        return True

    def _flush(self) -> bool:
        """Send pending output; True when all of it is gone."""
        assert self.pending is not None
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.close("peer-reset")
            return False
        self.record.bytes_out += sent
        if sent < len(self.pending):
            self.pending = self.pending[sent:]
            return False
        self.pending = None
        return True


@native(_NativeEcho)
def echo(conn: ServerConnection) -> None:
    """Send back everything received, until the client closes."""
    size = _SMALL
    while data := conn.recv(size):
        conn.sendall(data)
        size = _CHUNK if len(data) >= _SMALL else _SMALL



# -- sink ------------------------------------------------------------------------------


class _NativeSink(NativeConnection):
    def on_event(self, mask: int) -> None:
        try:
            n = self.sock.recv_into(self.reactor.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close("peer-reset")
            return
        if not n:
            self.record.saw_eof = True
            self.close("peer-eof")
        else:
            self.record.bytes_in += n


@native(_NativeSink)
def sink(conn: ServerConnection) -> None:
    """Read and discard everything until the client closes; ``record.bytes_in`` counts it."""
    _drain_until_eof(conn)



# -- blackhole -------------------------------------------------------------------------


class _NativeBlackhole(NativeConnection):
    initial_events = 0  # never read: registered for nothing, closed by stop()

    def on_event(self, mask: int) -> None:  # pragma: no cover - never registered
        pass


@native(_NativeBlackhole)
def blackhole(conn: ServerConnection) -> None:
    """Accept and never read or write; the connection stays open until the server stops.

    The client's sends succeed until the socket buffers fill, then block: what a hung peer
    looks like.
    """
    conn.stopping.wait()



# -- close (FIN) and reset (RST) --------------------------------------------------------


class _NativeClose(NativeConnection):
    def start(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close("peer-reset")
            return
        super().start()

    def on_event(self, mask: int) -> None:
        try:
            n = self.sock.recv_into(self.reactor.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close("peer-reset")
            return
        if not n:
            self.record.saw_eof = True
            self.close("handler")
        else:
            self.record.bytes_in += n


@native(_NativeClose)
def close(conn: ServerConnection) -> None:
    """Close at once with a FIN: the client's next read returns ``b""``.

    The server shuts down its sending side immediately, then reads (and discards) until the
    client closes, so that data the client sent is not answered with a reset.
    """
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:  # ENOTCONN: the client has reset the connection already
        conn.record.how_closed = "peer-reset"
        return
    _drain_until_eof(conn)
    conn.record.how_closed = "handler"



class _NativeReset(NativeConnection):
    initial_events = 0

    def start(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.close("handler")

    def on_event(self, mask: int) -> None:  # pragma: no cover - never registered
        pass


@native(_NativeReset)
def reset(conn: ServerConnection) -> None:
    """Reset at once with an RST (``SO_LINGER`` 0): the client sees ``ConnectionResetError``."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)



# -- banner ----------------------------------------------------------------------------


class Banner:
    """Send ``data`` as soon as the client connects, then hand over to ``then``.

    Without ``then`` the server closes with a FIN after the banner (and drains what the
    client sends so that the close is not a reset).

    Args:
        data: the bytes to send first, e.g. ``b"220 ready\\r\\n"``.
        then: another handler to continue the conversation with (e.g. ``handlers.echo``).
    """

    def __init__(self, data: bytes, *, then: Callable[[ServerConnection], object] | None = None):
        self.data = _as_bytes("data", data)
        if then is not None and not callable(then):
            raise TypeError(f"then must be a handler (callable) or None, got {then!r}")
        self.then = then
        self.__name__ = "banner"

    def __call__(self, conn: ServerConnection) -> None:
        conn.sendall(self.data)
        if self.then is not None:
            self.then(conn)
        else:
            close(conn)


# -- scripted conversation -------------------------------------------------------------


_EXPECT_MAX = 65536  # the longest frame an Expect pattern reads by default


@dataclass(frozen=True)
class Expect:
    """A script step: the client must send ``data`` next.

    ``data`` is exact bytes: exactly that many bytes are read and must be equal. Or it is
    a compiled bytes pattern, ``re.compile(rb"mail from:<.*>\\r\\n", re.IGNORECASE)``:
    the step reads up to and including the first ``until`` (a line by default), at most
    ``max_bytes``, and the pattern must match all of it (``fullmatch``, the ``until``
    included), so a client that words a command its own way (case, a host name) passes.

    Args:
        data: non-empty bytes, or a pattern made with ``re.compile(rb"...")``.
        until: a pattern's frame end (default a newline); the SMTP end of data
            (CR LF . CR LF), say. Only with a pattern.
        max_bytes: the most a pattern's frame may have (default 65536); more without
            ``until`` is a mismatch. Only with a pattern.
    """

    data: bytes | re.Pattern[bytes]
    until: bytes | None = field(default=None, kw_only=True)
    max_bytes: int | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        data = self.data
        if isinstance(data, re.Pattern):
            if not isinstance(data.pattern, bytes):
                raise TypeError(
                    f"Expect(data) must be bytes or a bytes pattern (re.compile(rb'...')), got "
                    f"the str pattern {data!r}"
                )
            if data.fullmatch(b"") is not None:
                raise ValueError(
                    f"Expect(data): the pattern must not match empty input (a client that "
                    f"closed at once would pass), got {data!r}"
                )
            until = b"\n" if self.until is None else _as_bytes("Expect(until)", self.until)
            if not until:
                raise ValueError("Expect(until) must be non-empty bytes, got b''")
            limit = _EXPECT_MAX if self.max_bytes is None else self.max_bytes
            limit = _check_int("Expect(max_bytes)", limit, len(until))
            object.__setattr__(self, "until", until)
            object.__setattr__(self, "max_bytes", limit)
            return
        given: object = data  # whatever the caller passed
        if not isinstance(given, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"Expect(data) must be bytes or a bytes pattern (re.compile(rb'...')), got "
                f"{type(given).__name__}"
            )
        object.__setattr__(self, "data", _as_bytes("Expect(data)", given))
        if not self.data:
            raise ValueError(f"Expect(data) must be non-empty bytes, got {self.data!r}")
        for name in ("until", "max_bytes"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"Expect({name}) applies to a pattern only: Expect(bytes) reads exactly "
                    f"len(data) bytes"
                )

    def read(self, conn: ServerConnection) -> str | None:
        """Read this step's input: why it does not match, ``None`` if it does."""
        data = self.data
        if isinstance(data, bytes):
            got = _recv_exactly(conn, len(data))
            if got == data:
                return None
            ending = "" if len(got) == len(data) else " (then the client closed)"
            return f"expected {data!r}, got {got!r}{ending}"
        assert self.until is not None and self.max_bytes is not None
        got, ended = _recv_until(conn, self.until, self.max_bytes)
        if ended and data.fullmatch(got) is not None:
            return None
        shown = repr(got[:_SHOWN]) + (f"... ({len(got)} bytes)" if len(got) > _SHOWN else "")
        why = "" if ended else (
            f" (no {self.until!r} in {self.max_bytes} bytes)" if len(got) >= self.max_bytes
            else " (then the client closed)"
        )
        return f"expected a match of {data!r}, got {shown}{why}"


_SHOWN = 64  # bytes of the input a pattern's mismatch quotes


@dataclass(frozen=True)
class Send:
    """A script step: the server sends ``data``."""

    data: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _as_bytes("Send(data)", self.data))


@dataclass(frozen=True)
class CloseStep:
    """A script step: the server closes (FIN, or RST with ``reset=True``)."""

    reset: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.reset, bool):
            raise TypeError(f"CloseStep(reset) must be True or False, got {self.reset!r}")


class ScriptMismatch(AssertionError):
    """The client did not send what the script expected."""


class Script:
    """A scripted conversation: expect/send steps checked in order.

    ``Script(Expect(b"HELO\\r\\n"), Send(b"250 hi\\r\\n"), CloseStep())``. A mismatch is a
    handler error (so the test fails) showing the step, what was expected and what came.
    When the steps run out, the server closes with a FIN (unless the last step closed).
    An ``Expect`` step reads no more than its own length, whatever the client sends.
    """

    def __init__(self, *steps: Expect | Send | CloseStep) -> None:
        if not steps:
            raise ValueError("Script needs at least one step (Expect, Send or CloseStep)")
        for i, step in enumerate(steps):
            if not isinstance(step, (Expect, Send, CloseStep)):
                raise TypeError(f"steps[{i}] must be Expect, Send or CloseStep, got {step!r}")
        self.steps = steps
        self.__name__ = "script"

    def __call__(self, conn: ServerConnection) -> None:
        for i, step in enumerate(self.steps):
            if isinstance(step, Send):
                conn.sendall(step.data)
            elif isinstance(step, Expect):
                why = step.read(conn)
                if why is not None:
                    if conn.stopping.is_set():
                        return
                    message = f"script step {i} (Expect): {why}"
                    del why  # the traceback keeps this frame: one copy of a long quote
                    raise ScriptMismatch(message)
            else:
                if step.reset:
                    reset(conn)
                else:
                    close(conn)
                return
        close(conn)


def _recv_until(conn: ServerConnection, until: bytes, limit: int) -> tuple[bytes, bool]:
    """Read up to and including ``until`` (at most ``limit`` bytes, never past ``until``:
    what follows is the next step's). Returns what came and whether ``until`` ended it."""
    got = bytearray()
    peek = not isinstance(conn, ssl.SSLSocket)  # TLS sockets take no recv flags
    keep = len(until) - 1
    while len(got) < limit:
        if peek:
            ahead = conn.recv(min(limit - len(got), _CHUNK), socket.MSG_PEEK)
            if not ahead:
                break
            # The terminator may straddle what came before and what is peeked now.
            tail = bytes(got[max(0, len(got) - keep) :]) if keep else b""
            found = (tail + ahead).find(until)
            data = conn.recv(len(ahead) if found < 0 else found + len(until) - len(tail))
        else:
            data = conn.recv(1)
        if not data:
            break
        got += data
        if got.endswith(until):
            return bytes(got), True
    return bytes(got), False


def _recv_exactly(conn: ServerConnection, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        data = conn.recv(min(n - len(chunks), _CHUNK))
        if not data:
            break
        chunks += data
    return bytes(chunks)


# -- newline-framed key-value server ---------------------------------------------------


class KeyValue:
    """A newline-framed key-value server: a small realistic protocol for client libraries.

    Requests, one per line (``\\n`` or ``\\r\\n``); keys have no spaces, values are the rest
    of the line::

        GET key        -> VALUE <value> | NOT_FOUND
        SET key value  -> OK
        DEL key        -> DELETED | NOT_FOUND
        PING           -> PONG
        QUIT           -> BYE, then the server closes

    Anything else gets ``ERROR <reason>`` and the connection stays usable. Lines longer than
    ``max_line`` get ``ERROR line too long`` and the connection is closed. ``store`` is
    shared by every connection (guarded by a lock) and may be inspected by tests.

    Args:
        store: the initial contents, str keys (non-empty, no space or newline) to str values
            (no newline).
        max_line: the longest request line accepted, in bytes without its ``\\n``; a
            connection holds at most this much of a line in memory.
    """

    def __init__(self, store: Mapping[str, str] | None = None, *, max_line: int = 65536):
        if store is not None and not isinstance(store, Mapping):
            raise TypeError(f"store must be a mapping of str to str or None, got {store!r}")
        for key, value in (store or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"store must map str to str, got {key!r}: {value!r}")
            if not key or " " in key or "\n" in key or not _utf8(key):
                raise ValueError(
                    f"store keys must be non-empty UTF-8 text without spaces or newlines, "
                    f"got {key!r}"
                )
            if "\n" in value or not _utf8(value):
                raise ValueError(
                    f"store values must be UTF-8 text without newlines, got {key!r}: {value!r}"
                )
        self.max_line = _check_int("max_line", max_line, 1)
        self.store: dict[str, str] = dict(store or {})
        self.lock = threading.Lock()
        self.commands = 0
        self.__name__ = "kv"

    def execute(self, line: str) -> str | None:
        """Apply one request line and return the reply (``None`` means QUIT)."""
        parts = line.split(" ", 2)
        cmd = parts[0].upper()
        with self.lock:
            self.commands += 1
            if cmd == "GET" and len(parts) == 2 and parts[1]:
                value = self.store.get(parts[1])
                return "NOT_FOUND" if value is None else f"VALUE {value}"
            if cmd == "SET" and len(parts) == 3 and parts[1]:
                self.store[parts[1]] = parts[2]
                return "OK"
            if cmd == "DEL" and len(parts) == 2 and parts[1]:
                return "DELETED" if self.store.pop(parts[1], None) is not None else "NOT_FOUND"
        if cmd == "PING" and len(parts) == 1:
            return "PONG"
        if cmd == "QUIT" and len(parts) == 1:
            return None
        if cmd in ("GET", "SET", "DEL", "PING", "QUIT"):
            return f"ERROR wrong arguments for {cmd}"
        return f"ERROR unknown command {parts[0][:32]!r}"

    def __call__(self, conn: ServerConnection) -> None:
        rfile = conn.makefile("rb")
        try:
            while True:
                raw = rfile.readline(self.max_line + 1)
                if not raw:
                    return
                if len(raw) > self.max_line and not raw.endswith(b"\n"):
                    conn.sendall(b"ERROR line too long\n")
                    _linger(conn, rfile)
                    return
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    conn.sendall(b"ERROR not utf-8\n")
                    continue
                reply = self.execute(line)
                if reply is None:
                    conn.sendall(b"BYE\n")
                    return
                conn.sendall(reply.encode("utf-8") + b"\n")
        finally:
            rfile.close()


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


# -- minimal HTTP/1.1 responder --------------------------------------------------------


@dataclass
class HTTPRequest:
    """A request as the responder parsed it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    connection_index: int

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class HTTPResponse:
    """What the responder sends. ``Content-Length`` is added unless given.

    Args:
        status: the status code, an int from 100 to 999.
        body: the body, bytes.
        headers: ``(name, value)`` str pairs; names are tokens, values Latin-1 text without
            CR, LF or NUL (so a header cannot end the head early).
        reason: the reason phrase; by default the standard one for ``status``.
    """

    status: int = 200
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None

    def __post_init__(self) -> None:
        body: object = self.body
        if isinstance(body, (bytearray, memoryview)):
            self.body = bytes(body)
        self._check()

    def _check(self) -> None:
        """Raise TypeError/ValueError naming the field that cannot be sent."""
        status = self.status
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"HTTPResponse(status) must be an int from 100 to 999, got {status!r}")
        if not 100 <= status <= 999:
            raise ValueError(f"HTTPResponse(status) must be from 100 to 999, got {status}")
        if not isinstance(self.body, bytes):
            raise TypeError(f"HTTPResponse(body) must be bytes, got {type(self.body).__name__}")
        headers = self.headers
        if isinstance(headers, (str, bytes, bytearray, Mapping)) or not isinstance(
            headers, Sequence
        ):
            raise TypeError(
                f"HTTPResponse(headers) must be a sequence of (name, value) str pairs, "
                f"got {headers!r}"
            )
        for item in headers:
            if not (
                isinstance(item, (tuple, list))
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], str)
            ):
                raise TypeError(
                    f"HTTPResponse(headers) items must be (name, value) str pairs, got {item!r}"
                )
            if not _TOKEN_TEXT.fullmatch(item[0]):
                raise ValueError(f"HTTPResponse(headers) name {item[0]!r} is not an HTTP token")
            if not _sendable(item[1]):
                raise ValueError(
                    f"HTTPResponse(headers) value of {item[0]!r} must be Latin-1 text without "
                    f"CR, LF or NUL, got {item[1]!r}"
                )
        reason = self.reason
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError(f"HTTPResponse(reason) must be a str or None, got {reason!r}")
            if not _sendable(reason):
                raise ValueError(
                    f"HTTPResponse(reason) must be Latin-1 text without CR, LF or NUL, "
                    f"got {reason!r}"
                )


def _sendable(text: str) -> bool:
    return not _BREAKS_HEAD.search(text) and all(ord(c) < 256 for c in text)


_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 417: "Expectation Failed", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}

# The grammar of RFC 9110/9112, strictly: anything else in a request is a 400.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_TEXT = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")  # no controls, no spaces
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # VCHAR / obs-text / SP / HTAB
# chunk-size = 1*HEXDIG, then optional extensions (ignored) after ";"
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
_BREAKS_HEAD = re.compile(r"[\r\n\x00]")
_MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions
# After an error response the server reads (and drops) up to this much of what the client
# is still sending before it closes: closing with unread data sends an RST, and an RST makes
# the client's kernel discard the response before the client has read it.
_LINGER_BYTES = 1024 * 1024
_PIECE = 64 * 1024  # request bodies are read (and refused ones dropped) this much at a time


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.method = "GET"  # HEAD once the request line said so: then no body is sent


def _strip_eol(raw: bytes) -> bytes | None:
    """``raw`` without its CRLF or LF; None when it has none (cut at a limit or at EOF)."""
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return None


def _read_into(rfile: Any, body: bytearray, n: int) -> bool:
    """Append exactly ``n`` bytes to ``body``; False at EOF before that.

    Read in pieces so that memory follows what the client really sent, not what it
    declared.
    """
    while n > 0:
        piece = rfile.read(min(n, _PIECE))
        if not piece:
            return False
        body += piece
        n -= len(piece)
    return True


def _linger(conn: ServerConnection, rfile: Any) -> None:
    """Half-close, then discard up to ``_LINGER_BYTES`` of input until the client closes.

    The caller has just sent its last response; the client may still be sending (a body
    that was refused, say). Discarding it lets the client finish sending and read the
    response, instead of getting a reset.
    """
    try:
        # The base-class shutdown: SSLSocket.shutdown would drop the TLS layer in use.
        socket.socket.shutdown(conn, socket.SHUT_WR)
        buffer = bytearray(_PIECE)
        left = _LINGER_BYTES
        while left > 0:
            n = rfile.readinto1(buffer)
            if not n:
                return
            left -= n
    except OSError:  # the client reset the connection, or the server is stopping
        pass


def _nothing() -> None:
    pass


class HTTPResponder:
    """A minimal HTTP/1.1 server that real HTTP clients (urllib3, requests, httpx) can drive.

    Keep-alive aware: HTTP/1.1 connections stay open unless either side says
    ``Connection: close``; HTTP/1.0 ones close unless the client asked for keep-alive.
    Request bodies are read by ``Content-Length`` or ``Transfer-Encoding: chunked``. A client
    that sends ``Expect: 100-continue`` (curl for large bodies) gets ``100 Continue`` once the
    head is accepted, before its body is read (a body over ``max_body_bytes`` gets the 413
    instead, unsent); any other expectation gets ``417 Expectation Failed``.
    Malformed requests get a 4xx response (with a short body saying what was wrong) and the
    connection is closed.

    Args:
        respond: either a fixed :class:`HTTPResponse` (or ``bytes`` for a 200 body), or a
            function ``respond(request) -> HTTPResponse`` called for each request. An
            exception in it is a handler error (the client gets a 500 first).
        max_header_bytes: requests whose head (request line and headers) is larger get a
            431 response; the trailers of a chunked body have the same limit.
        max_body_bytes: requests whose body is larger get a 413 response; no more than this
            is buffered per request.
        max_headers: requests with more header fields (or trailer fields) get a 431.

    Attributes:
        requests: every request received so far, in order.
    """

    def __init__(
        self,
        respond: HTTPResponse | bytes | Callable[[HTTPRequest], HTTPResponse] = b"",
        *,
        max_header_bytes: int = 65536,
        max_body_bytes: int = 64 * 1024 * 1024,
        max_headers: int = 100,
    ) -> None:
        if isinstance(respond, (bytes, bytearray)):
            fixed = HTTPResponse(body=bytes(respond))
            self._respond: Callable[[HTTPRequest], HTTPResponse] = lambda _request: fixed
        elif isinstance(respond, HTTPResponse):
            self._respond = lambda _request: respond
        elif callable(respond):
            self._respond = respond
        else:
            raise TypeError(
                f"respond must be an HTTPResponse, bytes or a function, got {respond!r}"
            )
        self.max_header_bytes = _check_int("max_header_bytes", max_header_bytes, 1)
        self.max_body_bytes = _check_int("max_body_bytes", max_body_bytes, 0)
        self.max_headers = _check_int("max_headers", max_headers, 0)
        self.requests: list[HTTPRequest] = []
        self._lock = threading.Lock()
        self.__name__ = "http"

    def __call__(self, conn: ServerConnection) -> None:
        rfile = conn.makefile("rb")
        try:
            while True:
                try:
                    request = self._read_request(rfile, conn)
                except _BadRequest as exc:
                    self._send(conn, HTTPResponse(exc.status, str(exc).encode()), exc.method, False)
                    _linger(conn, rfile)
                    return
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                try:
                    response = self._respond(request)
                    if not isinstance(response, HTTPResponse):
                        raise TypeError(
                            f"respond(request) must return an HTTPResponse, got {response!r}"
                        )
                    response._check()  # it may have been changed since it was made
                except BaseException:
                    try:
                        self._send(
                            conn, HTTPResponse(500, b"handler error"), request.method, False
                        )
                    except OSError:
                        pass  # the client is gone: the error to report is the one raised
                    raise
                keep = self._keep_alive(request, response)
                self._send(conn, response, request.method, keep)
                if not keep:
                    return
        finally:
            rfile.close()

    @staticmethod
    def _keep_alive(request: HTTPRequest, response: HTTPResponse) -> bool:
        tokens = {
            t.strip().lower() for t in (request.header("connection") or "").split(",")
        }
        for key, value in response.headers:
            if key.lower() == "connection":
                tokens |= {t.strip().lower() for t in value.split(",")}
        if "close" in tokens:
            return False
        return request.version == "HTTP/1.1" or "keep-alive" in tokens

    def _read_request(self, rfile: Any, conn: ServerConnection) -> HTTPRequest | None:
        limit = self.max_header_bytes
        line = rfile.readline(limit + 1)
        used = len(line)
        while line in (b"\r\n", b"\n"):  # tolerate blank lines before a request (RFC 9112)
            if used > limit:
                raise _BadRequest(431, "headers too large")
            line = rfile.readline(limit - used + 1)
            used += len(line)
        if not line:
            return None
        content = _strip_eol(line)
        if content is None or used > limit:
            raise _BadRequest(431 if used > limit else 400, "bad request line")
        parts = content.split(b" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
            raise _BadRequest(400, "bad request line")
        method, target, version = (p.decode("latin-1") for p in parts)
        try:
            if version not in ("HTTP/1.1", "HTTP/1.0"):
                raise _BadRequest(505, "unsupported version")
            if not _TARGET.fullmatch(parts[1]):
                raise _BadRequest(400, "bad request line")
            headers = self._read_fields(rfile, limit - used, "headers")
            request = HTTPRequest(method, target, version, headers, b"", conn.record.index)
            request.body = self._read_body(rfile, headers, self._expectation(request, conn))
        except _BadRequest as exc:
            exc.method = method
            raise
        return request

    def _read_fields(self, rfile: Any, budget: int, what: str) -> list[tuple[str, str]]:
        """Header (or trailer) fields up to the blank line, in at most ``budget`` bytes."""
        fields: list[tuple[str, str]] = []
        while True:
            raw = rfile.readline(budget + 1)
            budget -= len(raw)
            if budget < 0:
                raise _BadRequest(431, f"{what} too large")
            content = _strip_eol(raw)
            if content is None:  # EOF: the limit was not reached
                raise _BadRequest(400, f"incomplete {what}")
            if not content:
                return fields
            if len(fields) >= self.max_headers:
                raise _BadRequest(431, f"too many {what}")
            # No space before the colon, no obs-fold (a line starting with a space): the name
            # must be a token.
            name, sep, value = content.partition(b":")
            if not sep or not _TOKEN.fullmatch(name):
                raise _BadRequest(400, "bad header line")
            value = value.strip(b" \t")
            if not _FIELD_VALUE.fullmatch(value):
                raise _BadRequest(400, "bad header value")
            fields.append((name.decode("latin-1"), value.decode("latin-1")))

    @staticmethod
    def _expectation(request: HTTPRequest, conn: ServerConnection) -> Callable[[], None]:
        """What to do before reading the body: answer ``Expect: 100-continue`` (RFC 9110
        10.1.1; ignored from an HTTP/1.0 client), refuse any other expectation with 417."""
        expect = request.header("expect")
        if expect is None or request.version != "HTTP/1.1":
            return _nothing
        if expect.strip(" \t").lower() != "100-continue":
            raise _BadRequest(417, "unsupported expectation")
        return lambda: conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _read_body(
        self, rfile: Any, headers: list[tuple[str, str]], before: Callable[[], None]
    ) -> bytes:
        codings = [v for k, v in headers if k.lower() == "transfer-encoding"]
        lengths = [v for k, v in headers if k.lower() == "content-length"]
        if codings:
            if lengths:  # RFC 9112 6.3: a request smuggling vector, refuse it
                raise _BadRequest(400, "both content-length and transfer-encoding")
            if [c.strip(" \t").lower() for v in codings for c in v.split(",")] != ["chunked"]:
                raise _BadRequest(501, "unsupported transfer-encoding")
            before()
            return self._read_chunked(rfile)
        if not lengths:
            return b""
        text = lengths[0]
        # 1*DIGIT in ASCII: str.isdigit() alone accepts "²"; repeated fields must agree.
        if not (text.isascii() and text.isdigit()) or any(v != text for v in lengths):
            raise _BadRequest(400, "bad content-length")
        digits = text.lstrip("0") or "0"
        # Compare lengths first: int() of a very long digit string raises ValueError.
        if len(digits) > len(str(self.max_body_bytes)) or int(digits) > self.max_body_bytes:
            raise _BadRequest(413, "body too large")
        if digits != "0":
            before()
        body = bytearray()
        if not _read_into(rfile, body, int(digits)):
            raise _BadRequest(400, "incomplete body")
        return bytes(body)

    def _read_chunked(self, rfile: Any) -> bytes:
        body = bytearray()
        while True:
            content = _strip_eol(rfile.readline(_MAX_CHUNK_LINE + 1))
            match = _CHUNK_SIZE.fullmatch(content) if content is not None else None
            if match is None:
                raise _BadRequest(400, "bad chunk size")
            size = int(match.group(1), 16)  # base 16: no digit-count limit applies
            if size == 0:
                self._read_fields(rfile, self.max_header_bytes, "trailers")  # ignored
                return bytes(body)
            if len(body) + size > self.max_body_bytes:
                raise _BadRequest(413, "body too large")
            if not _read_into(rfile, body, size) or _strip_eol(rfile.readline(3)) != b"":
                raise _BadRequest(400, "incomplete chunk")

    @staticmethod
    def _send(conn: ServerConnection, response: HTTPResponse, method: str, keep: bool) -> None:
        reason = response.reason or _REASONS.get(response.status, "Unknown")
        head = [f"HTTP/1.1 {response.status} {reason}"]
        names = {k.lower() for k, _ in response.headers}
        head.extend(f"{k}: {v}" for k, v in response.headers)
        no_body = method == "HEAD" or response.status in (204, 304) or response.status < 200
        if "content-length" not in names and response.status not in (204, 304):
            head.append(f"Content-Length: {len(response.body)}")
        if "connection" not in names:
            head.append("Connection: keep-alive" if keep else "Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        conn.sendall(data if no_body else data + response.body)


__all__ = [
    "Banner",
    "CloseStep",
    "Expect",
    "HTTPRequest",
    "HTTPResponder",
    "HTTPResponse",
    "KeyValue",
    "Script",
    "ScriptMismatch",
    "Send",
    "blackhole",
    "close",
    "echo",
    "reset",
    "sink",
]
