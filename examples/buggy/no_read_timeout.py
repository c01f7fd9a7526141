"""BUGGY: a client that reads without a timeout.

``socket.create_connection`` without ``timeout=`` gives a blocking socket: when the network
goes silent, ``recv`` waits for ever and so does the test. The fault proxy's ``Timeout``
fault makes the network go silent on purpose; the hang watchdog (``--deadlock-timeout``)
turns the hang into a failure after the deadline, with every thread's stack, which points at
the ``recv``::

    pytest --deadlock-timeout=2 examples/buggy/no_read_timeout.py

The fix: ``socket.create_connection(address, timeout=5)``; the test then passes (the read
raises ``TimeoutError``).
"""

from __future__ import annotations

import socket

import pytest

from pytest_netthreads import faults, handlers


def get(address: tuple[str, int], key: str) -> str:
    with socket.create_connection(address) as sock:  # BUG: no timeout
        sock.sendall(f"GET {key}\n".encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            reply += chunk
    return reply.decode().rstrip("\n")


def test_a_silent_network_is_a_timeout(server_factory, fault_proxy):
    kv = server_factory(handlers.KeyValue({"k": "v"}))
    proxy = fault_proxy(kv, faults.Timeout(after_bytes=0))  # replies never arrive
    with pytest.raises(TimeoutError):
        get(proxy.address, "k")
