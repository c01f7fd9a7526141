"""BUGGY: a background thread that ``close()`` never stops nor joins.

``EventPublisher`` sends events to a server from a background thread fed by a queue.
``close()`` waits until every queued event was sent and closes the socket, but never tells
the thread to stop, nor joins it: the thread waits in ``queue.get()`` for the rest of the
run. Caught by ``--thread-leak-check`` at the test's teardown, with where the thread was
started and where it is stuck::

    pytest --thread-leak-check examples/buggy/unjoined_worker.py

The fix: ``self.events.put(None)`` then ``self.thread.join(timeout)`` in ``close()``.
"""

from __future__ import annotations

import queue
import socket
import threading

from pytest_netthreads import handlers


class EventPublisher:
    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.events: queue.Queue[bytes | None] = queue.Queue()
        self.thread = threading.Thread(
            target=self._send_events, name="event-publisher", daemon=True
        )
        self.thread.start()

    def publish(self, event: bytes) -> None:
        self.events.put(event)

    def _send_events(self) -> None:
        while True:
            event = self.events.get()
            if event is None:
                return
            self.sock.sendall(event + b"\n")
            self.events.task_done()

    def close(self) -> None:
        self.events.join()  # every queued event was sent
        self.sock.close()  # BUG: the thread is never told to stop (put(None)) nor joined


def test_publish_then_close(server_factory):
    sink = server_factory(handlers.sink)
    publisher = EventPublisher(sink.address)
    publisher.publish(b"started")
    publisher.close()
    (record,) = sink.wait_for_connections(1, closed=True)
    assert record.bytes_in == len(b"started\n")
