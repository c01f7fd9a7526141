"""BUGGY: a client helper that never closes its connection.

Each call opens a connection, sends a line and returns the reply; the socket is dropped when
the function returns, so CPython closes it in its finalizer, with a ``ResourceWarning`` that
does not say where it was created (and ``--socket-leak-check`` sees nothing: the socket is
closed by the time the test ends). Caught by ``--socket-leak-collected`` at the test's
teardown, with where the socket was created and to what it was connected::

    pytest --socket-leak-collected examples/buggy/dropped_connection.py

The fix: ``with socket.create_connection(address, timeout=5) as sock:``.
"""

from __future__ import annotations

import socket


def ask(address: tuple[str, int], line: bytes) -> bytes:
    sock = socket.create_connection(address, timeout=5)  # BUG: never closed
    sock.sendall(line)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def test_ask(echo_server):
    assert ask(echo_server.address, b"PING\n") == b"PING\n"
