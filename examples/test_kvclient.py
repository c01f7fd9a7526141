"""The example suite: a client library tested against the kit's servers."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from kvclient import KVClient, KVError

from pytest_netthreads import handlers


@pytest.fixture
def kv_server(server_factory):
    return server_factory(handlers.KeyValue({"greeting": "hello"}))


def test_get_set_delete(kv_server):
    with KVClient(kv_server.address) as kv:
        assert kv.get("greeting") == "hello"
        kv.set("answer", "forty two")
        assert kv.get("answer") == "forty two"
        assert kv.delete("answer") is True
        assert kv.get("answer") is None
    assert kv_server.handler.store == {"greeting": "hello"}


def test_the_pool_reuses_connections_across_threads(kv_server):
    with KVClient(kv_server.address, pool_size=3) as kv, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: kv.set(f"k{i}", str(i)), range(200)))
        assert [kv.get(f"k{i}") for i in range(200)] == [str(i) for i in range(200)]
    # 200 commands from 8 threads went through at most 3 connections.
    assert 1 <= len(kv_server.connections) <= 3


def test_server_errors_are_raised(kv_server):
    with KVClient(kv_server.address) as kv, pytest.raises(KVError, match="wrong arguments"):
        kv.get("two words")


def test_retry_after_the_server_resets_the_first_connection(server_factory):
    kv = handlers.KeyValue({"k": "v"})
    first = threading.Event()

    def reset_first_then_serve(conn):
        if not first.is_set():
            first.set()
            conn.recv(100)
            handlers.reset(conn)
            return
        kv(conn)

    srv = server_factory(reset_first_then_serve)
    with KVClient(srv.address, retries=1) as client:
        assert client.get("k") == "v"
    assert [r.index for r in srv.connections] == [0, 1]


def test_a_silent_server_times_out(server_factory):
    srv = server_factory(handlers.blackhole)
    with KVClient(srv.address, timeout=0.2) as kv, pytest.raises(socket.timeout):
        kv.get("k")


def test_a_server_that_closes_at_once_is_retried_then_reported(server_factory):
    srv = server_factory(handlers.close)
    with KVClient(srv.address, retries=2) as kv, pytest.raises(ConnectionResetError):
        kv.get("k")
    assert len(srv.connections) == 3  # one try and two retries


def test_echo_server_talks_back(echo_server):
    with socket.create_connection(echo_server.address, timeout=5) as s:
        s.sendall(b"GET k\n")
        assert s.recv(100) == b"GET k\n"
