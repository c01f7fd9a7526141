"""BUGGY: a reader that assumes one ``recv`` returns exactly one whole reply.

TCP is a byte stream: a reply can arrive in pieces (and two replies in one piece). On
loopback with small messages this reader nearly always works, so ordinary tests pass. The
in-process fault ``RecvChunks`` makes ``recv`` return exactly the pieces you choose; the
proxy fault ``Slice`` sends the reply in pieces with a delay between them. Both make the
bug fail the test every time::

    pytest examples/buggy/one_recv_one_message.py

The fix: buffer until the newline, e.g. ``sock.makefile("rb").readline()``.
"""

from __future__ import annotations

import socket

import pytest

from pytest_netthreads import faults, handlers


def get(sock: socket.socket, key: str) -> str:
    sock.sendall(f"GET {key}\n".encode())
    return sock.recv(4096).decode().rstrip("\n")  # BUG: one recv is not one reply


@pytest.fixture
def kv(server_factory):
    return server_factory(handlers.KeyValue({"greeting": "hello world"}))


def test_reply_in_pieces(kv, socket_faults):
    socket_faults.add(faults.RecvChunks([6], cycle=True), address=kv.address)
    with socket.create_connection(kv.address, timeout=5) as sock:
        assert get(sock, "greeting") == "VALUE hello world"


def test_reply_through_a_slicing_proxy(kv, fault_proxy):
    proxy = fault_proxy(kv, faults.Slice(6, delay=0.2))
    with socket.create_connection(proxy.address, timeout=5) as sock:
        assert get(sock, "greeting") == "VALUE hello world"
