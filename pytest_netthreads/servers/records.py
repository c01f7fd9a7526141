"""What a server records and raises, and the socket its handlers get.

Shared by the server core (:mod:`.core`) and its TLS layer (:mod:`.tls_accept`), which is why
it lives apart from both.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._runtime.values import format_address

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from .core import ThreadedServer

Address = tuple[str, int] | str
"""``(host, port)`` for TCP servers, the socket path for Unix domain servers."""


HowClosed = Literal[
    "peer-eof", "peer-reset", "handler", "server-stop", "error", "handshake-failed", "unserved"
]
"""How a connection ended.

``peer-eof``: the client closed its side and the handler finished; ``peer-reset``: the client
reset the connection (or vanished mid-message); ``handler``: the handler returned or closed
the connection on its own; ``server-stop``: :meth:`ThreadedServer.stop` closed it (its
handler ran, on what the client had sent before the stop); ``error``: the handler raised;
``handshake-failed``: the TLS handshake did not complete; ``unserved``: accepted, but its
handler never ran before the stop timeout passed (a pool kept busy by stuck handlers),
reported by :class:`ServerStopTimeout`.
"""


@dataclass(eq=False)
class ConnectionRecord:
    """What a server saw of one connection. Read it; the server fills it in."""

    index: int
    """0 for the first connection the server accepted, then 1, 2, ..."""
    peer: Address
    """The client's address (``(host, port)``, or ``""`` for unnamed Unix sockets)."""
    opened_at: float
    """``time.time()`` when the connection was accepted."""
    closed_at: float | None = None
    """``time.time()`` when the server closed it, ``None`` while it is open."""
    bytes_in: int = 0
    """Bytes the server read from the client (after TLS decryption)."""
    bytes_out: int = 0
    """Bytes the server sent to the client (before TLS encryption)."""
    how_closed: HowClosed | None = None
    """See :data:`HowClosed`; ``None`` while the connection is open."""
    error: str | None = None
    """The formatted traceback when the handler raised."""
    thread_name: str | None = None
    """The worker thread that served it (``None`` for selector connections)."""
    saw_eof: bool = False
    """Whether the server read end-of-file from the client."""
    tls: dict[str, Any] | None = None
    """TLS details (version, cipher, ALPN, SNI, client certificate) for TLS servers."""

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    @property
    def duration(self) -> float | None:
        """Seconds the connection was open, ``None`` while it is open."""
        return None if self.closed_at is None else self.closed_at - self.opened_at


class ServerError(Exception):
    """Base class of the errors a server raises at :meth:`~ThreadedServer.stop`."""


class HandlerError(ServerError):
    """One or more connection handlers raised. The message holds each server-side traceback.

    Attributes:
        server_name: the server's name.
        failures: ``(record, exception)`` for each error, ``record`` ``None`` for errors that
            belong to no connection (accepting failed, for instance).
    """

    def __init__(
        self,
        server_name: str,
        failures: list[tuple[ConnectionRecord | None, BaseException, str]],
        extra: str = "",
    ) -> None:
        self.server_name = server_name
        self.failures = [(rec, exc) for rec, exc, _ in failures]
        parts = [f"{len(failures)} error(s) in server {server_name}:"]
        for rec, exc, text in failures:
            where = (
                "while accepting"
                if rec is None
                else f"in connection #{rec.index} from {format_address(rec.peer)}"
                + (f" (thread {rec.thread_name})" if rec.thread_name else "")
            )
            parts.append(f"--- {type(exc).__name__} {where}; server-side traceback:\n{text}")
        if extra:
            parts.append(extra)
        super().__init__("\n".join(parts).rstrip())

    @property
    def exceptions(self) -> list[BaseException]:
        return [exc for _, exc in self.failures]


class ServerStopTimeout(ServerError):
    """Worker threads did not finish within the stop timeout. Names each with its stack.

    Attributes:
        threads: the worker threads still running.
        unserved: the records of connections accepted but never served (their handler did
            not get to run before the timeout; ``how_closed="unserved"``).
    """

    def __init__(
        self,
        server_name: str,
        report: str,
        threads: list[threading.Thread],
        unserved: list[ConnectionRecord] | None = None,
    ) -> None:
        self.server_name = server_name
        self.threads = threads
        self.unserved = unserved or []
        super().__init__(report)


class TLSHandshakeFailed(Exception):
    """Raised by the TLS layer when a connection's handshake fails.

    Recorded on the connection (``how_closed="handshake-failed"``, the reason in
    ``record.error``); it does not fail the test: a client refusing a bad certificate is
    usually what the test wants.
    """


class Handler(Protocol):
    def __call__(self, conn: ServerConnection, /) -> object: ...


class CountingSocket:
    """Counts the bytes a handler reads and writes into the connection's record."""

    record: ConnectionRecord

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data: bytes = super().recv(bufsize, flags)  # type: ignore[misc]
        if data:
            self.record.bytes_in += len(data)
        elif bufsize:
            self.record.saw_eof = True
        return data

    def recv_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        n: int = super().recv_into(buffer, nbytes, flags)  # type: ignore[misc]
        if n:
            self.record.bytes_in += n
        elif nbytes or memoryview(buffer).nbytes:
            self.record.saw_eof = True
        return n

    def send(self, data: Buffer, flags: int = 0) -> int:
        n: int = super().send(data, flags)  # type: ignore[misc]
        self.record.bytes_out += n
        return n

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        super().sendall(data, flags)  # type: ignore[misc]
        self.record.bytes_out += memoryview(data).nbytes


class ServerConnection(CountingSocket, socket.socket):
    """The socket a handler gets: a real :class:`socket.socket`, with a little more.

    Attributes:
        record: this connection's :class:`ConnectionRecord` (bytes are counted as you go).
        stopping: an :class:`threading.Event` set when the server starts stopping; a handler
            that waits for something other than its socket should wait on this too.
        server: the :class:`ThreadedServer` that accepted it.
    """

    record: ConnectionRecord
    stopping: threading.Event
    server: ThreadedServer


__all__ = [
    "Address",
    "ConnectionRecord",
    "CountingSocket",
    "Handler",
    "HandlerError",
    "HowClosed",
    "ServerConnection",
    "ServerError",
    "ServerStopTimeout",
    "TLSHandshakeFailed",
]
