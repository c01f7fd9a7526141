"""The example suite: a client library tested against the kit's servers.

It uses every capability of the kit on ``kvclient.py``: the plain and TLS echo servers,
``server_factory`` (plain, TLS, mutual TLS and a negative certificate preset), the fault proxy
and in-process socket faults (retries, timeouts, partial reads), and the detectors (the
thread- and socket-leak check, the deadlock detector and the lock-order check). The last test
runs this whole file again in a fresh ``pytest`` with every detector on.
"""

from __future__ import annotations

import pathlib
import shutil
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from kvclient import KVClient, KVConnection, KVError

from pytest_netthreads import ThreadLeakChecker, ThreadLeakError, faults, handlers
from pytest_netthreads.detect.lockorder import LockOrderChecker


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


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"pool_size must be an int >= 1, got 0"):
        KVClient(("127.0.0.1", 1), pool_size=0)
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds > 0"):
        KVClient(("127.0.0.1", 1), timeout=-1)
    with pytest.raises(ValueError, match=r"retries must be an int >= 0, got 'x'"):
        KVClient(("127.0.0.1", 1), retries="x")


# -- TLS --------------------------------------------------------------------------------


def test_over_tls(server_factory, tls_client_context):
    srv = server_factory(handlers.KeyValue({"k": "v"}), tls=True)
    with KVClient(srv.address, ssl_context=tls_client_context) as kv:
        assert kv.get("k") == "v"
    (record,) = srv.wait_for_connections(1)
    assert record.tls is not None
    assert record.tls["version"].startswith("TLSv1.")


def test_the_connection_speaks_tls_to_the_tls_echo_server(tls_echo_server, tls_client_context):
    conn = KVConnection(tls_echo_server.address, 5, tls_client_context, "localhost")
    try:
        assert conn.request("PING") == "PING"  # the echo server sends the line back
    finally:
        conn.close()


def test_mutual_tls(server_factory, tls_ca):
    kv = handlers.KeyValue({"k": "v"})
    srv = server_factory(kv, tls=tls_ca.server_context(client_certs="required"))
    with KVClient(srv.address, ssl_context=tls_ca.client_context(client_cert=True)) as client:
        assert client.get("k") == "v"
    # Without a client certificate the server refuses; under TLS 1.3 the refusal arrives as
    # an alert on the client's first read.
    with KVClient(srv.address, ssl_context=tls_ca.client_context(), retries=0) as client:
        with pytest.raises(ssl.SSLError, match=r"(?i)certificate required"):
            client.get("k")
    refused = srv.wait_for_connections(2, closed=True)[1]
    assert refused.how_closed == "handshake-failed"
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in (refused.error or "")


def test_an_expired_server_certificate_is_refused(server_factory, tls_ca, tls_client_context):
    srv = server_factory(handlers.KeyValue(), tls=tls_ca.server_context(preset="expired"))
    with KVClient(srv.address, ssl_context=tls_client_context) as kv:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
            kv.get("k")


# -- faults -------------------------------------------------------------------------------


def test_a_stale_pooled_connection_is_retried_on_a_fresh_one(kv_server, fault_proxy):
    proxy = fault_proxy(kv_server)
    with KVClient(proxy.address, retries=1) as kv:
        assert kv.get("greeting") == "hello"  # leaves one idle connection in the pool
        with proxy.add(faults.ResetPeer()):  # resets the idle connection (and any new one)
            pass
        assert kv.get("greeting") == "hello"  # the reset one fails, a fresh one answers
    assert len(kv_server.connections) == 2
    assert [event.action for event in proxy.log] == ["reset"]


def test_a_reply_that_stops_halfway_times_out_and_the_connection_is_dropped(
    kv_server, fault_proxy
):
    proxy = fault_proxy(kv_server)
    with KVClient(proxy.address, timeout=0.3) as kv:
        with proxy.add(faults.Timeout(after_bytes=3)):  # "VAL", then silence
            with pytest.raises(socket.timeout):
                kv.get("greeting")
        # Had the half-read connection been reused, its next reply would be "UE hello".
        assert kv.get("greeting") == "hello"
    assert len(kv_server.connections) == 2


def test_a_slow_network_in_one_byte_pieces(kv_server, fault_proxy):
    proxy = fault_proxy(
        kv_server, faults.Latency(0.01), faults.Slice(1, delay=0.001, direction="both")
    )
    with KVClient(proxy.address) as kv:
        kv.set("sentence", "split into pieces")
        assert kv.get("sentence") == "split into pieces"


def test_every_read_and_send_cut_short(kv_server, socket_faults):
    socket_faults.add(
        faults.RecvChunks([1], cycle=True), faults.ShortSends([2], cycle=True),
        address=kv_server.address,
    )
    with KVClient(kv_server.address) as kv:
        kv.set("k", "a value")
        assert kv.get("k") == "a value"


def test_a_reset_between_requests_is_retried(kv_server, socket_faults):
    with KVClient(kv_server.address, retries=1) as kv:
        assert kv.get("greeting") == "hello"  # the pooled connection's first read
        # Its second read fails as if the server had reset it; the retry's connection is new,
        # so its first read succeeds.
        socket_faults.add(
            faults.RecvError(ConnectionResetError, at_call=2), address=kv_server.address
        )
        assert kv.get("greeting") == "hello"
    assert [(e.socket, e.operation, e.call) for e in socket_faults.log] == [(0, "recv", 2)]


# -- detectors ----------------------------------------------------------------------------


def test_close_leaves_no_socket_open(kv_server):
    with ThreadLeakChecker(grace=2.0, sockets=True):
        with KVClient(kv_server.address, pool_size=3) as kv, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: kv.set(f"k{i}", "v"), range(50)))


def test_the_leak_check_sees_a_client_that_is_not_closed(kv_server):
    kv = KVClient(kv_server.address)
    with pytest.raises(ThreadLeakError, match=r"1 socket\(s\) created by the checked block"):
        with ThreadLeakChecker(grace=0, sockets=True):
            kv.get("greeting")
    kv.close()


def test_no_lock_order_inversion_under_concurrency(kv_server):
    with LockOrderChecker() as checker:
        with KVClient(kv_server.address, pool_size=2) as kv, ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: kv.set(f"k{i}", "v") or kv.get(f"k{i}"), range(100)))
    assert [report.text for report in checker.take_reports()] == []


def test_the_whole_suite_under_every_detector(pytester):
    """This file again, in a fresh ``pytest`` with every detector on: all tests pass."""
    here = pathlib.Path(__file__).resolve().parent
    for name in ("kvclient.py", "test_kvclient.py"):
        shutil.copy(here / name, pytester.path / name)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "error",
        "--thread-leak-check", "--socket-leak-check",
        "--deadlock-timeout=60", "--lock-order-check",
        "-k", "not test_the_whole_suite_under_every_detector",
        timeout=300,
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 20, result.stdout.str()
    result.assert_outcomes(passed=outcomes["passed"], deselected=1)
