"""BUGGY: an echo handler that spins once its client has gone.

``recv`` returns ``b""`` when the peer has closed. This handler never checks for it: after the
client leaves it calls ``recv`` in a tight loop for ever, burning a core. Caught by the
server's bounded ``stop()``: a worker that does not finish within ``stop_timeout`` fails the
test at teardown, named, with its current stack (``ServerStopTimeout``)::

    pytest examples/buggy/spinning_echo.py

The fix: ``if not data: return`` right after the ``recv``.
"""

from __future__ import annotations

import socket

from pytest_netthreads import ServerConnection


def spinning_echo(conn: ServerConnection) -> None:
    while True:
        data = conn.recv(4096)  # BUG: b"" (the client left) is not checked: spins for ever
        if data:
            conn.sendall(data)


def test_echo_once(server_factory):
    srv = server_factory(spinning_echo, stop_timeout=0.5)
    with socket.create_connection(srv.address, timeout=5) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
