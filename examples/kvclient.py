"""A small, realistic client library for the key-value reference server.

It is what the example suite tests: a connection pool shared by threads, timeouts on every
socket operation, and retries of idempotent commands on a fresh connection when the server
resets or closes one. Protocol: see ``pytest_netthreads.handlers.KeyValue``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KVError(Exception):
    """The server answered ``ERROR ...`` or broke the protocol."""


class KVConnection:
    """One connection; reads replies line by line through a buffered file."""

    def __init__(self, address: tuple[str, int], timeout: float) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def request(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        reply = self.rfile.readline(1 << 20)
        if not reply.endswith(b"\n"):
            raise ConnectionResetError("server closed the connection mid-reply")
        return reply.decode().rstrip("\n")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


class KVClient:
    """A thread-safe client with a bounded connection pool.

    Args:
        address: the server's ``(host, port)``.
        timeout: seconds for connecting and for each reply.
        pool_size: connections kept for reuse.
        retries: how many times an idempotent command (GET, SET, DEL) is retried on a new
            connection after a reset or a close.
    """

    def __init__(
        self, address: tuple[str, int], *, timeout: float = 5.0, pool_size: int = 4,
        retries: int = 2,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self._idle: list[KVConnection] = []
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def _connection(self) -> Iterator[KVConnection]:
        if not self._slots.acquire(timeout=self.timeout):
            raise TimeoutError("no free connection in the pool")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = KVConnection(self.address, self.timeout)
            try:
                yield conn
            except BaseException:
                conn.close()  # a connection in an unknown state is never reused
                raise
            with self._lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)
        finally:
            self._slots.release()

    def _call(self, line: str) -> str:
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                with self._connection() as conn:
                    reply = conn.request(line)
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                if attempt + 1 == attempts:
                    raise
                continue
            if reply.startswith("ERROR"):
                raise KVError(reply)
            return reply
        raise AssertionError("unreachable")

    def get(self, key: str) -> str | None:
        reply = self._call(f"GET {key}")
        if reply == "NOT_FOUND":
            return None
        if not reply.startswith("VALUE "):
            raise KVError(f"unexpected reply {reply!r}")
        return reply[6:]

    def set(self, key: str, value: str) -> None:
        if self._call(f"SET {key} {value}") != "OK":
            raise KVError("SET not acknowledged")

    def delete(self, key: str) -> bool:
        return self._call(f"DEL {key}") == "DELETED"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> KVClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
