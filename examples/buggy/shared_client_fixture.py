"""BUGGY: a client fixture whose teardown forgets the client's heartbeat thread.

``StatsClient`` sends a heartbeat from a background thread it starts when it connects;
``close()`` closes the socket but never stops that thread, which waits for its next beat for
the rest of the run. Every test that uses the ``stats`` fixture leaks one thread, all alike:
the same target, started at the same line, through the same fixture. The check reports the
first one in full, the others in three lines each, and the summary lists the finding once,
with the tests it hit; "started by" names the fixture that led to the library's start::

    pytest --thread-leak-check --thread-leak-grace=0.2 examples/buggy/shared_client_fixture.py

The fix: an ``Event`` the heartbeat waits on, set in ``close()``, then ``join(timeout)``.
"""

from __future__ import annotations

import socket
import threading

import pytest

from pytest_netthreads import handlers

_FOREVER = threading.Event()  # never set: how long the heartbeat waits between beats


class StatsClient:
    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.lock = threading.Lock()
        self.heartbeat = threading.Thread(target=self._beat, name="stats-heartbeat", daemon=True)
        self.heartbeat.start()

    def _beat(self) -> None:
        while not _FOREVER.wait(60):  # BUG: close() has no way to stop this loop
            with self.lock:
                self.sock.sendall(b"ping\n")

    def incr(self, name: str) -> None:
        with self.lock:
            self.sock.sendall(f"incr {name}\n".encode())

    def close(self) -> None:
        with self.lock:
            self.sock.close()  # BUG: the heartbeat thread is neither stopped nor joined


@pytest.fixture
def stats(server_factory):
    client = StatsClient(server_factory(handlers.sink).address)
    yield client
    client.close()


def test_counts_a_login(stats):
    stats.incr("login")


def test_counts_a_logout(stats):
    stats.incr("logout")


def test_counts_an_error(stats):
    stats.incr("error")
