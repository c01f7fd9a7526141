"""BUGGY: ``close()`` joins a worker thread while holding the lock the worker needs.

The sender thread takes ``self.lock`` to grab the pending lines before each send, its last one
included; ``close()`` holds ``self.lock`` while it waits for that thread to finish. Each waits
for the other: a deadlock, every time. Caught by ``--deadlock-timeout`` the moment the cycle
closes (not at the timeout), naming both threads, the lock and the join::

    pytest --deadlock-timeout=30 examples/buggy/join_under_lock.py

The fix: put the stop command and join *after* leaving the ``with self.lock`` block.
"""

from __future__ import annotations

import queue
import socket
import threading

from pytest_netthreads import handlers


class BatchSender:
    """Buffers lines and sends them to a server from a background thread."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.lock = threading.Lock()
        self.pending: list[bytes] = []
        self.commands: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="batch-sender")
        self.thread.start()

    def send(self, line: bytes) -> None:
        with self.lock:
            self.pending.append(line)
        self.commands.put("flush")

    def _run(self) -> None:
        while True:
            command = self.commands.get()
            with self.lock:
                batch, self.pending = self.pending, []
            self.sock.sendall(b"".join(batch))
            if command == "stop":
                return

    def close(self) -> None:
        with self.lock:
            self.commands.put("stop")
            self.thread.join()  # BUG: waits for the thread while holding the lock it needs
        self.sock.close()


def test_send_then_close(server_factory):
    sink = server_factory(handlers.sink)
    sender = BatchSender(sink.address)
    sender.send(b"one\n")
    sender.close()
