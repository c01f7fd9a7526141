"""BUGGY: a connection pool whose ``close()`` never closes its sockets.

The pools are process-wide (one per address, as many client libraries keep a default one), so
the forgotten connections are never garbage-collected either: they stay open until the process
exits. Caught by ``--socket-leak-check`` at the test's teardown, with where each socket was
created and to what it is connected::

    pytest --socket-leak-check examples/buggy/leaky_pool.py

The fix: close every idle connection in ``close()``.
"""

from __future__ import annotations

import socket
import threading

_POOLS: dict[tuple[str, int], ConnectionPool] = {}


def pool_for(address: tuple[str, int]) -> ConnectionPool:
    """The process-wide pool for ``address``."""
    return _POOLS.setdefault(address, ConnectionPool(address))


class ConnectionPool:
    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.lock = threading.Lock()
        self.idle: list[socket.socket] = []
        self.closed = False

    def request(self, line: bytes) -> bytes:
        with self.lock:
            if self.closed:
                raise RuntimeError("the pool is closed")
            sock = self.idle.pop() if self.idle else None
        if sock is None:
            sock = socket.create_connection(self.address, timeout=5)
        sock.sendall(line)
        reply = sock.recv(4096)
        with self.lock:
            self.idle.append(sock)
        return reply

    def close(self) -> None:
        with self.lock:
            self.closed = True  # BUG: the idle sockets are never closed


def test_pool_round_trip(echo_server):
    pool = pool_for(echo_server.address)
    assert pool.request(b"PING\n") == b"PING\n"
    pool.close()
