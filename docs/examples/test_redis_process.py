"""A real redis-server per test (``process_server``), with the fault proxy in front of it.

The code under test is ``cached``: a read-through cache that must fall back to computing the
value when Redis is slow or gone, not hang and not crash. The kit starts ``redis-server`` on a
free loopback port, waits until it answers ``PING``, and stops it (and anything it forked) at
teardown; a failed test shows the server's log.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pytest_netthreads import faults

REDIS_SERVER = shutil.which("redis-server")


def cached(client: redis.Redis, key: str, compute: Callable[[], str]) -> str:
    """The value of ``key`` from Redis, else ``compute()`` (stored when Redis is up)."""
    try:
        value = client.get(key)
    except (redis.exceptions.TimeoutError, redis.exceptions.ConnectionError):
        return compute()  # Redis is a cache: never fail a request because of it
    if value is not None:
        return str(value.decode())
    value = compute()
    try:
        client.set(key, value, ex=60)
    except (redis.exceptions.TimeoutError, redis.exceptions.ConnectionError):
        pass
    return value


@pytest.fixture
def redis_server(process_server):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return process_server(
        [REDIS_SERVER, "--port", "{port}", "--bind", "{host}", "--dir", "{tmpdir}",
         "--save", "", "--appendonly", "no"],
        ready_send=b"PING\r\n",
        ready_banner=rb"\+PONG",
    )


def client_for(address, timeout=0.5):
    host, port = address
    # No retries: the first failure is the one the cache must survive.
    return redis.Redis(host, port, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def test_values_are_cached(redis_server):
    client = client_for(redis_server.address)
    calls = []
    try:
        assert cached(client, "k", lambda: calls.append(1) or "v") == "v"
        assert cached(client, "k", lambda: calls.append(1) or "v") == "v"
    finally:
        client.close()
    assert calls == [1]  # computed once, then read from Redis


@pytest.mark.parametrize("fault", [faults.Timeout(), faults.ResetPeer()], ids=["slow", "reset"])
def test_falls_back_when_redis_misbehaves(redis_server, fault_proxy, fault):
    proxy = fault_proxy(redis_server, fault)
    client = client_for(proxy.address)
    try:
        assert cached(client, "k", lambda: "computed") == "computed"
    finally:
        client.close()
