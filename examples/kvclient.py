"""A small, realistic client library for the key-value reference server.

It is what the example suite tests: a connection pool shared by threads, timeouts on every
socket operation, retries of idempotent commands on a fresh connection when the server
resets or closes one, and TLS (with a client certificate for mutual TLS) when given an
``ssl.SSLContext``. Protocol: see ``pytest_netthreads.handlers.KeyValue``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KVError(Exception):
    """The server answered ``ERROR ...`` or broke the protocol."""


class KVConnection:
    """One connection; reads replies line by line through a buffered file."""

    def __init__(
        self, address: tuple[str, int], timeout: float,
        ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
    ) -> None:
        sock = socket.create_connection(address, timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(
                    sock, server_hostname=server_hostname or address[0]
                )
        except BaseException:
            sock.close()  # a failed handshake must not leave the socket open
            raise
        self.sock = sock
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
        ssl_context: speak TLS with this client context (it decides the trusted CAs and
            whether a client certificate is presented).
        server_hostname: the name to verify the server's certificate against; default the
            address's host.
    """

    def __init__(
        self, address: tuple[str, int], *, timeout: float = 5.0, pool_size: int = 4,
        retries: int = 2, ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
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
                conn = KVConnection(
                    self.address, self.timeout, self.ssl_context, self.server_hostname
                )
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
