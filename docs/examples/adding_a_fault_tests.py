"""The tests that come with the example fault of docs/faults.rst ("Adding a fault").

They need ``adding_a_fault.diff`` applied; ``test_adding_a_fault.py`` applies it to a copy
of the package and runs them there.
"""

from __future__ import annotations

import socket

import pytest

from pytest_netthreads import faults


def test_inject_inserts_the_bytes_at_the_offset(echo_server, fault_proxy):
    proxy = fault_proxy(echo_server, faults.Inject(b"!", at=2))
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"hello")
        data = b""
        while len(data) < 6:
            data += sock.recv(100)
    assert data == b"he!llo"
    assert [(e.offset, e.action) for e in proxy.log] == [(2, "inject")]


def test_inject_checks_its_data():
    with pytest.raises(TypeError, match="data must be bytes"):
        faults.Inject("!")


def test_inject_on_a_message(echo_server, fault_proxy):
    second_line = faults.Message(faults.Lines(), nth=2)  # offsets count from its start
    proxy = fault_proxy(echo_server, faults.Inject(b"!", at=1, on=second_line))
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"ab\ncd\n")
        data = b""
        while len(data) < 7:
            data += sock.recv(100)
    assert data == b"ab\nc!d\n"
