"""Reference connection handlers.

Each is a callable ``handler(conn)`` for :class:`~pytest_netthreads.ThreadedServer`. The
simple ones (echo, sink, blackhole, close, reset) also carry a non-blocking implementation
(their ``native`` attribute) used with ``concurrency="selector"``.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._reactor import EVENT_READ, EVENT_WRITE
from .core import ConnectionRecord, NativeConnection, ServerConnection

_CHUNK = 256 * 1024
# Reads start at _SMALL, under glibc's default 128 KiB mmap threshold with the bytes header:
# a 256 KiB bytes object is mmap()ed, mremap()ed to its length and munmap()ed on every read,
# which cut small-message round trips by about a third here. A read that fills _SMALL means a
# stream is flowing, and the next ones take _CHUNK (fewer system calls per byte for bulk).
_SMALL = 128 * 1024 - 64
_LINGER_ZERO = struct.pack("ii", 1, 0)


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


def echo(conn: ServerConnection) -> None:
    """Send back everything received, until the client closes."""
    size = _SMALL
    while data := conn.recv(size):
        conn.sendall(data)
        size = _CHUNK if len(data) >= _SMALL else _SMALL


echo.native = _NativeEcho  # type: ignore[attr-defined]


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


def sink(conn: ServerConnection) -> None:
    """Read and discard everything until the client closes; ``record.bytes_in`` counts it."""
    _drain_until_eof(conn)


sink.native = _NativeSink  # type: ignore[attr-defined]


# -- blackhole -------------------------------------------------------------------------


class _NativeBlackhole(NativeConnection):
    initial_events = 0  # never read: registered for nothing, closed by stop()

    def on_event(self, mask: int) -> None:  # pragma: no cover - never registered
        pass


def blackhole(conn: ServerConnection) -> None:
    """Accept and never read or write; the connection stays open until the server stops.

    The client's sends succeed until the socket buffers fill, then block: what a hung peer
    looks like.
    """
    conn.stopping.wait()


blackhole.native = _NativeBlackhole  # type: ignore[attr-defined]


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


close.native = _NativeClose  # type: ignore[attr-defined]


class _NativeReset(NativeConnection):
    initial_events = 0

    def start(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.close("handler")

    def on_event(self, mask: int) -> None:  # pragma: no cover - never registered
        pass


def reset(conn: ServerConnection) -> None:
    """Reset at once with an RST (``SO_LINGER`` 0): the client sees ``ConnectionResetError``."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


reset.native = _NativeReset  # type: ignore[attr-defined]


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
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        if then is not None and not callable(then):
            raise TypeError(f"then must be a handler (callable) or None, got {then!r}")
        self.data = bytes(data)
        self.then = then
        self.__name__ = "banner"

    def __call__(self, conn: ServerConnection) -> None:
        conn.sendall(self.data)
        if self.then is not None:
            self.then(conn)
        else:
            close(conn)


# -- scripted conversation -------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """A script step: the client must send exactly ``data`` next."""

    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes) or not self.data:
            raise ValueError(f"Expect(data) must be non-empty bytes, got {self.data!r}")


@dataclass(frozen=True)
class Send:
    """A script step: the server sends ``data``."""

    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise ValueError(f"Send(data) must be bytes, got {self.data!r}")


@dataclass(frozen=True)
class CloseStep:
    """A script step: the server closes (FIN, or RST with ``reset=True``)."""

    reset: bool = False


class ScriptMismatch(AssertionError):
    """The client did not send what the script expected."""


class Script:
    """A scripted conversation: expect/send steps checked in order.

    ``Script(Expect(b"HELO\\r\\n"), Send(b"250 hi\\r\\n"), CloseStep())``. A mismatch is a
    handler error (so the test fails) showing the step, what was expected and what came.
    When the steps run out, the server closes with a FIN (unless the last step closed).
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
                got = _recv_exactly(conn, len(step.data))
                if got != step.data:
                    if conn.stopping.is_set():
                        return
                    ending = "" if len(got) == len(step.data) else " (then the client closed)"
                    raise ScriptMismatch(
                        f"script step {i} (Expect): expected {step.data!r}, got {got!r}{ending}"
                    )
            else:
                if step.reset:
                    reset(conn)
                else:
                    close(conn)
                return
        close(conn)


def _recv_exactly(conn: ServerConnection, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        data = conn.recv(n - len(chunks))
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
    """

    def __init__(self, store: Mapping[str, str] | None = None, *, max_line: int = 65536):
        self.store: dict[str, str] = dict(store or {})
        self.lock = threading.Lock()
        self.max_line = max_line
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
    """What the responder sends. ``Content-Length`` is added unless given."""

    status: int = 200
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None


_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class HTTPResponder:
    """A minimal HTTP/1.1 server that real HTTP clients (urllib3, requests, httpx) can drive.

    Keep-alive aware: HTTP/1.1 connections stay open unless either side says
    ``Connection: close``; HTTP/1.0 ones close unless the client asked for keep-alive.
    Request bodies are read by ``Content-Length`` or ``Transfer-Encoding: chunked``.
    Malformed requests get a 4xx response and the connection is closed.

    Args:
        respond: either a fixed :class:`HTTPResponse` (or ``bytes`` for a 200 body), or a
            function ``respond(request) -> HTTPResponse`` called for each request. An
            exception in it is a handler error (the client gets a 500 first).
        max_header_bytes: requests whose head is larger get a 431 response.

    Attributes:
        requests: every request received so far, in order.
    """

    def __init__(
        self,
        respond: HTTPResponse | bytes | Callable[[HTTPRequest], HTTPResponse] = b"",
        *,
        max_header_bytes: int = 65536,
        max_body_bytes: int = 64 * 1024 * 1024,
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
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.requests: list[HTTPRequest] = []
        self._lock = threading.Lock()
        self.__name__ = "http"

    def __call__(self, conn: ServerConnection) -> None:
        rfile = conn.makefile("rb")
        try:
            while True:
                try:
                    request = self._read_request(rfile, conn.record)
                except _BadRequest as exc:
                    self._send(conn, HTTPResponse(exc.status, str(exc).encode()), "HEAD", False)
                    return
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                try:
                    response = self._respond(request)
                except BaseException:
                    self._send(conn, HTTPResponse(500, b"handler error"), request.method, False)
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

    def _read_request(self, rfile: Any, record: ConnectionRecord) -> HTTPRequest | None:
        line = rfile.readline(self.max_header_bytes + 1)
        while line in (b"\r\n", b"\n"):  # tolerate blank lines before a request (RFC 9112)
            line = rfile.readline(self.max_header_bytes + 1)
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise _BadRequest(431 if len(line) > self.max_header_bytes else 400, "bad request line")
        parts = line.rstrip(b"\r\n").split(b" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]):
            raise _BadRequest(400, "bad request line")
        method, target, version = (p.decode("latin-1") for p in parts)
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _BadRequest(505, "unsupported version")
        headers: list[tuple[str, str]] = []
        total = len(line)
        while True:
            hline = rfile.readline(self.max_header_bytes + 1)
            total += len(hline)
            if total > self.max_header_bytes:
                raise _BadRequest(431, "headers too large")
            if not hline:
                raise _BadRequest(400, "incomplete headers")
            if hline in (b"\r\n", b"\n"):
                break
            name, sep, value = hline.partition(b":")
            if not sep or not _TOKEN.match(name):
                raise _BadRequest(400, "bad header line")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        request = HTTPRequest(method, target, version, headers, b"", record.index)
        te = (request.header("transfer-encoding") or "").lower()
        if te:
            if te != "chunked":
                raise _BadRequest(501, "unsupported transfer-encoding")
            request.body = self._read_chunked(rfile)
        else:
            length_text = request.header("content-length")
            if length_text is not None:
                if not length_text.isdigit():
                    raise _BadRequest(400, "bad content-length")
                length = int(length_text)
                if length > self.max_body_bytes:
                    raise _BadRequest(413, "body too large")
                body = rfile.read(length)
                if len(body) != length:
                    raise _BadRequest(400, "incomplete body")
                request.body = body
        return request

    def _read_chunked(self, rfile: Any) -> bytes:
        body = bytearray()
        while True:
            size_line = rfile.readline(1024)
            if not size_line.endswith(b"\n"):
                raise _BadRequest(400, "bad chunk size")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size == 0:
                while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers, ignored
                return bytes(body)
            if len(body) + size > self.max_body_bytes:
                raise _BadRequest(413, "body too large")
            chunk = rfile.read(size)
            if len(chunk) != size or rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BadRequest(400, "incomplete chunk")
            body += chunk

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

