"""Server-side TLS: wrap an accepted connection and run its handshake in the worker thread.

A :class:`~pytest_netthreads.ThreadedServer` with an ``ssl_context`` calls :func:`accept_tls`
in the connection's worker thread; the reactor thread only accepts, so a slow or stalled
handshake never holds up other connections.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .records import ConnectionRecord, CountingSocket, ServerConnection, TLSHandshakeFailed

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from .core import ThreadedServer


LINGER_TIMEOUT = 2.0
"""After a failed handshake, seconds to wait for the client to close before closing."""


class TLSServerConnection(CountingSocket, ssl.SSLSocket):
    """The socket a handler of a TLS server gets: an :class:`ssl.SSLSocket` with the same
    extras as :class:`~pytest_netthreads.ServerConnection` (``record``, ``stopping``,
    ``server``). Bytes are counted in plain text, after decryption and before encryption.
    """

    record: ConnectionRecord
    stopping: threading.Event
    server: ThreadedServer
    sni_name: str | None = None
    """The server name the client asked for (SNI), when the context records it."""

    # SSLSocket's signatures, counting through CountingSocket. A client that vanishes without
    # closing TLS makes OpenSSL raise SSLEOFError; it is raised as ConnectionAbortedError,
    # a disconnect like ConnectionResetError on plain sockets (see ignore_disconnects).
    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return CountingSocket.recv(self, buflen, flags)
        except ssl.SSLEOFError as exc:
            raise _vanished(exc) from exc

    def recv_into(self, buffer: Buffer, nbytes: int | None = None, flags: int = 0) -> int:
        if nbytes is None:
            nbytes = memoryview(buffer).nbytes
        try:
            return CountingSocket.recv_into(self, buffer, nbytes, flags)
        except ssl.SSLEOFError as exc:
            raise _vanished(exc) from exc

    def send(self, data: Buffer, flags: int = 0) -> int:
        try:
            return CountingSocket.send(self, data, flags)
        except ssl.SSLEOFError as exc:
            raise _vanished(exc) from exc

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        # SSLSocket.sendall loops over self.send, which already counts: skip
        # CountingSocket.sendall so that each byte is counted once.
        ssl.SSLSocket.sendall(self, data, flags)


def _vanished(exc: ssl.SSLEOFError) -> ConnectionAbortedError:
    return ConnectionAbortedError(f"the client closed the TLS connection abruptly ({exc})")


def record_sni(sock: Any, server_name: str | None, context: ssl.SSLContext) -> None:
    """An ``SSLContext.sni_callback`` that remembers the requested name on the connection.

    Contexts made by :class:`~pytest_netthreads.tls.CertificateAuthority` install it; set it
    on your own server context to get ``record.tls["sni"]`` filled in too.
    """
    if isinstance(sock, TLSServerConnection):
        sock.sni_name = server_name


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"TLS handshake timed out: the client did not complete it within {timeout:g}s"
    if isinstance(exc, ssl.SSLEOFError) or (
        isinstance(exc, ssl.SSLError) and exc.reason == "UNEXPECTED_EOF_WHILE_READING"
    ):
        return "TLS handshake failed: the client closed the connection during the handshake"
    if isinstance(exc, ConnectionError):
        return f"TLS handshake failed: the client vanished ({type(exc).__name__}: {exc})"
    return f"TLS handshake failed: {type(exc).__name__}: {exc}"


def tls_details(sock: ssl.SSLSocket) -> dict[str, Any]:
    """What ``record.tls`` holds for a completed handshake.

    Keys: ``version`` (``"TLSv1.3"``...), ``cipher`` (its OpenSSL name), ``cipher_bits``,
    ``alpn`` (the selected protocol or ``None``), ``sni`` (the name the client asked for, or
    ``None``), ``client_cert`` (``getpeercert()`` of a verified client certificate, else
    ``None``) and ``client_cert_der`` (its DER bytes, else ``None``).
    """
    cipher = sock.cipher()
    der = sock.getpeercert(binary_form=True)
    return {
        "version": sock.version(),
        "cipher": cipher[0] if cipher else None,
        "cipher_bits": cipher[2] if cipher else None,
        "alpn": sock.selected_alpn_protocol(),
        "sni": getattr(sock, "sni_name", None),
        "client_cert": (sock.getpeercert() or None) if der else None,
        "client_cert_der": der,
    }


def _lingering_close(sock: ssl.SSLSocket) -> None:
    """Send FIN after our alert, then read what the client still sends until it closes.

    Closing a socket with unread data makes the kernel send a reset, and a reset can
    overtake the TLS alert in the client's receive buffer: the client would see "EOF
    occurred in violation of protocol" instead of "certificate required" or "unknown ca"
    (with TLS 1.3 a client sends its request before it learns it was refused).
    """
    deadline = time.monotonic() + LINGER_TIMEOUT
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            # The raw socket's recv: the TLS session is dead, only bytes are left.
            if not socket.socket.recv(sock, 65536):
                return
    except OSError:
        pass


def accept_tls(
    conn: ServerConnection,
    context: ssl.SSLContext,
    timeout: float,
    on_wrapped: Callable[[socket.socket], object],
) -> ServerConnection:
    """Wrap ``conn`` with ``context`` and run the handshake (worker thread).

    Returns a :class:`TLSServerConnection`: not a subclass of ``ServerConnection`` (it is an
    ``SSLSocket``) but it has the same methods and attributes, which is what handlers use.

    Args:
        conn: the accepted connection.
        context: the server's context.
        timeout: seconds the client has to complete the handshake.
        on_wrapped: called with the wrapped socket before the handshake, so that the server
            shuts that one down when it stops (the original one is detached).

    Raises:
        TLSHandshakeFailed: the handshake failed or timed out (the server records it as
            ``how_closed="handshake-failed"``; it does not fail the test).
        OSError: the server is stopping (recorded as ``"server-stop"``).
    """
    record = conn.record
    if conn.family in (socket.AF_INET, socket.AF_INET6):
        # A handshake is several small writes (and TLS 1.3 servers send session tickets
        # right after it): with Nagle's algorithm against the client's delayed ACK, the
        # first round trip waits ~40 ms.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        # What SSLContext.wrap_socket does, with our subclass: setting
        # context.sslsocket_class instead would change a context the user may share.
        wrapped: TLSServerConnection = TLSServerConnection._create(  # type: ignore[attr-defined]
            sock=conn,
            server_side=True,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=True,
            context=context,
        )
    except BaseException:
        conn.close()
        raise
    wrapped.record = record
    wrapped.stopping = conn.stopping
    wrapped.server = conn.server
    # From here on stop() shuts down the wrapped socket (the original one is detached).
    on_wrapped(wrapped)
    try:
        if conn.stopping.is_set():
            # stop() may have looked at the connection before the replacement above.
            raise ConnectionAbortedError("the server is stopping")
        wrapped.settimeout(timeout)
        wrapped.do_handshake()
        wrapped.settimeout(None)
        record.tls = tls_details(wrapped)
    except BaseException as exc:
        stopping = conn.stopping.is_set()
        if not stopping and isinstance(exc, ssl.SSLError):
            _lingering_close(wrapped)
        wrapped.close()
        if stopping or not isinstance(exc, OSError):
            raise
        raise TLSHandshakeFailed(_describe(exc, timeout)) from exc
    return cast("ServerConnection", wrapped)


__all__ = ["TLSServerConnection", "accept_tls", "record_sni", "tls_details"]
