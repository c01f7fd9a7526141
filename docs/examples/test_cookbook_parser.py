"""The cookbook's protocol-parser recipe (docs/cookbook.rst); run by the project's suite.

Needs Hypothesis (the ``test`` or ``hypothesis`` extra).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads.faults import RecvChunks, SocketFaults
from pytest_netthreads.faults.strategies import chunkings


# [parser]
class NetstringReader:
    """Reads netstrings (``5:hello,``) from a socket, however its reads are cut."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(4096)
        if not chunk:
            raise EOFError("the peer closed the connection")
        self.buffer += chunk

    def read(self) -> bytes:
        while b":" not in self.buffer:
            self._fill()
        size, _, rest = self.buffer.partition(b":")
        length = int(size)
        while len(rest) < length + 1:  # the payload and its closing comma
            self._fill()
            size, _, rest = self.buffer.partition(b":")
        if rest[length : length + 1] != b",":
            raise ValueError(f"netstring of length {length} not closed by ','")
        self.buffer = rest[length + 1 :]
        return rest[:length]
# [/parser]


# [chunkings]
MESSAGES = [b"hello", b"", b"a:b,c", b"x" * 20]
STREAM = b"".join(b"%d:%s," % (len(m), m) for m in MESSAGES)


@pytest.fixture(scope="module")
def netstring_server() -> Iterator[ThreadedServer]:
    # Module-scoped: Hypothesis runs the test body many times within one test.
    with ThreadedServer(handlers.Banner(STREAM)) as server:
        yield server


def test_any_chunking_gives_the_same_messages(netstring_server):
    @settings(max_examples=100, deadline=None, database=None)
    @given(sizes=chunkings(len(STREAM)))
    def check(sizes):
        with SocketFaults(RecvChunks(sizes), address=netstring_server.address):
            with socket.create_connection(netstring_server.address, timeout=5) as sock:
                reader = NetstringReader(sock)
                assert [reader.read() for _ in MESSAGES] == MESSAGES
                with pytest.raises(EOFError):
                    reader.read()

    check()
# [/chunkings]


def test_a_corrupt_frame_is_an_error(server_factory):
    srv = server_factory(handlers.Banner(b"3:abcX"))
    with socket.create_connection(srv.address, timeout=5) as sock:
        with pytest.raises(ValueError, match="not closed by ','"):
            NetstringReader(sock).read()
