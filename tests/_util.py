"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator

from pytest_netthreads._runtime.threads import is_internal


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not is_internal(t)}


def connect(address: object, timeout: float = 10.0) -> socket.socket:
    """A client socket connected to a TCP ``(host, port)`` or a Unix path."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    return socket.create_connection(address, timeout=timeout)  # type: ignore[arg-type]


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class HeldClose:
    """Events around the close of the connection sockets bound to a port (see held_close)."""

    def __init__(self) -> None:
        self.closing = threading.Event()  # a close began and is held
        self.proceed = threading.Event()  # set to let it go
        self.closed = threading.Event()  # the socket is closed


@contextlib.contextmanager
def held_close(port: int) -> Iterator[HeldClose]:
    """While inside: ``socket.close()`` of a connection socket (not a listener) whose local
    port is ``port`` sets ``closing`` and waits (10 s at most) for ``proceed``; ``closed`` is
    set once it closed. On the way out, ``proceed`` is set and ``close`` restored."""
    held = HeldClose()
    original: Callable[[socket.socket], None] = socket.socket.close

    def close(sock: socket.socket) -> None:
        try:  # (no getpeername(): a connection shut down both ways has no peer any more)
            ours = sock.getsockname()[1] == port and not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            )
        except OSError:  # closed already
            ours = False
        if ours:
            held.closing.set()
            held.proceed.wait(10)
        original(sock)
        if ours:
            held.closed.set()

    setattr(socket.socket, "close", close)  # noqa: B010 (mypy: the stub's socket type)
    try:
        yield held
    finally:
        held.proceed.set()
        setattr(socket.socket, "close", original)  # noqa: B010
