"""Helpers shared by the tests."""

from __future__ import annotations

import os
import socket
import threading

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
