"""Real clients and a real server through the fault proxy: redis-py against redis-server,
http.client and urllib3 against the HTTP responder."""

from __future__ import annotations

import http.client
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import urllib3
from redis.backoff import NoBackoff
from redis.retry import Retry

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads.faults import (
    RESP,
    FaultProxy,
    Latency,
    LimitData,
    Message,
    ResetPeer,
    Slice,
    Timeout,
)

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_server() -> Iterator[tuple[str, int]]:
    """A real redis-server on a free loopback port, no persistence; stopped by its pid."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--protected-mode", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        # Ready when it says so in its log; bounded by a deadline.
        deadline = time.monotonic() + 20
        seen = b""
        while b"Ready to accept connections" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {port}:\n{seen.decode()}")
            if select.select([proc.stdout], [], [], left)[0]:
                seen += os.read(proc.stdout.fileno(), 65536)
        yield ("127.0.0.1", port)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def proxy(redis_server: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server, seed=1) as proxy:
        yield proxy


def _client(proxy: FaultProxy, timeout: float = 10.0) -> redis.Redis:
    # No retries: each test wants to see the first failure.
    return redis.Redis(
        host=proxy.host, port=proxy.port, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def test_redis_through_one_byte_slices(proxy: FaultProxy) -> None:
    proxy.add(Slice(1, direction="both"))
    client = _client(proxy)
    try:
        assert client.ping()
        client.set("key", "a value long enough to be cut into many pieces")
        assert client.get("key") == b"a value long enough to be cut into many pieces"
    finally:
        client.close()
    assert {e.direction for e in proxy.log if e.action == "applied"} == {"upstream", "downstream"}


def test_redis_read_timeout(proxy: FaultProxy) -> None:
    client = _client(proxy, timeout=1.0)
    try:
        assert client.ping()
        proxy.add(Timeout())
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()
    finally:
        client.close()


def test_redis_reset_mid_conversation(proxy: FaultProxy) -> None:
    client = _client(proxy)
    try:
        assert client.ping()
        proxy.add(ResetPeer())
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
        proxy.clear()
        assert client.ping()  # a new connection through the same proxy works
    finally:
        client.close()
    assert any(e.action == "reset" for e in proxy.log)


def test_redis_with_latency(proxy: FaultProxy) -> None:
    client = _client(proxy)
    try:
        assert client.ping()
        with proxy.add(Latency(0.2)):
            started = time.monotonic()
            assert client.ping()
            assert time.monotonic() - started >= 0.2  # lower bound only
    finally:
        client.close()


@pytest.fixture
def http_server() -> Iterator[ThreadedServer]:
    with ThreadedServer(handlers.HTTPResponder(b"0123456789" * 100)) as server:
        yield server


def test_http_client_through_slices(http_server: ThreadedServer) -> None:
    with FaultProxy(http_server, Slice(7, variation=5, direction="both")) as proxy:
        conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
        try:
            for _ in range(3):  # keep-alive: the same connection each time
                conn.request("GET", "/")
                response = conn.getresponse()
                assert response.read() == b"0123456789" * 100
        finally:
            conn.close()
        assert len(proxy.connections) == 1


def test_urllib3_sees_a_truncated_body(http_server: ThreadedServer) -> None:
    with FaultProxy(http_server, LimitData(200)) as proxy:
        with urllib3.PoolManager(retries=False, timeout=10) as pool:
            with pytest.raises(urllib3.exceptions.ProtocolError, match="IncompleteRead"):
                pool.request("GET", proxy.url + "/")


def test_urllib3_read_timeout(http_server: ThreadedServer) -> None:
    with FaultProxy(http_server, Timeout(after_bytes=50)) as proxy:
        timeout = urllib3.Timeout(connect=10, read=0.5)
        with urllib3.PoolManager(retries=False, timeout=timeout) as pool:
            with pytest.raises(urllib3.exceptions.ReadTimeoutError):
                pool.request("GET", proxy.url + "/")


# -- message triggers and holds (RESP) -----------------------------------------------------


def test_redis_reset_on_exec_discards_the_transaction(
    proxy: FaultProxy, redis_server: tuple[str, int]
) -> None:
    key = f"tx-{proxy.port}"
    proxy.add(ResetPeer(direction="upstream", on=Message(RESP(), match=b"EXEC")))
    client = _client(proxy)
    direct = redis.Redis(*redis_server, socket_timeout=10)
    try:
        assert client.ping()  # commands before EXEC go through
        pipe = client.pipeline(transaction=True)
        pipe.set(key, "never")
        pipe.incr(f"{key}-n")
        with pytest.raises(redis.exceptions.ConnectionError):
            pipe.execute()  # MULTI, SET, INCR, EXEC in one write: the reset falls before EXEC
        # The server never got EXEC: the transaction was discarded with the connection.
        assert direct.get(key) is None
        assert direct.get(f"{key}-n") is None
    finally:
        client.close()
        direct.close()
    resets = [e for e in proxy.log if e.action == "reset"]
    assert len(resets) == 1
    assert proxy.connections[0].how_closed == "fault-reset"


def test_redis_slow_nth_reply_times_the_client_out(proxy: FaultProxy) -> None:
    # The second reply that holds "yes" is held back for an hour: the client times out.
    proxy.add(Latency(3600, on=Message(RESP(), match=b"yes", nth=2)))
    client = _client(proxy, timeout=0.5)
    try:
        assert client.echo("yes") == b"yes"
        assert client.echo("no") == b"no"
        with pytest.raises(redis.exceptions.TimeoutError):
            client.echo("yes")
    finally:
        client.close()
    # (the message's number counts the replies to redis-py's own setup commands too)
    assert [e.action.split(" message ")[0] for e in proxy.log] == ["triggered by", "applied"]


def test_redis_hold_orders_two_clients(proxy: FaultProxy, redis_server: tuple[str, int]) -> None:
    key = f"order-{proxy.port}"
    clients = [_client(proxy), _client(proxy)]
    direct = redis.Redis(*redis_server, socket_timeout=10)
    results: list[object] = []
    try:
        for client in clients:
            assert client.ping()  # connected (and its handshake commands done) before holding
        with proxy.hold("upstream", RESP()) as hold:
            threads = [
                threading.Thread(target=lambda c=c, v=v: results.append(c.rpush(key, v)))
                for c, v in zip(clients, ("first-sent", "second-sent"))
            ]
            threads[0].start()
            hold.wait_held(1)
            threads[1].start()
            held = hold.wait_held(2)
            assert [m.connection for m in held] == [0, 1]
            held[1].release()  # the second client's RPUSH reaches the server first
            threads[1].join(10)
            assert direct.lrange(key, 0, -1) == [b"second-sent"]
            held[0].release()
            threads[0].join(10)
        assert not any(t.is_alive() for t in threads)
        assert direct.lrange(key, 0, -1) == [b"second-sent", b"first-sent"]
        assert sorted(results) == [1, 2]  # type: ignore[type-var]
    finally:
        for client in clients:
            client.close()
        direct.delete(key)
        direct.close()
