"""The CA's files drive a real TLS server: redis-server with mutual TLS, redis-py as client."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pytest_netthreads.tls import CertificateAuthority

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture(scope="module")
def ca() -> Iterator[CertificateAuthority]:
    with CertificateAuthority() as authority:
        yield authority


@pytest.fixture(scope="module")
def redis_tls_port(ca: CertificateAuthority) -> Iterator[int]:
    """redis-server serving only TLS, requiring client certificates from the CA."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    cert, key = ca.server_cert_files()
    args = [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", cert, "--tls-key-file", key]
    args += ["--tls-ca-cert-file", ca.ca_bundle_path(), "--tls-auth-clients", "yes"]
    args += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # An external process gives no readiness signal we can wait on: try to connect,
        # bounded by a deadline (plain TCP; the TLS tests come after).
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not listen on {port}") from None
                time.sleep(0.05)
        yield port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def client(ca: CertificateAuthority, port: int, *, with_cert: bool) -> redis.Redis:
    certfile, keyfile = ca.client_cert_files() if with_cert else (None, None)
    return redis.Redis(
        host="localhost",
        port=port,
        ssl=True,
        ssl_ca_certs=ca.ca_bundle_path(),
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        socket_timeout=10,
        retry=Retry(NoBackoff(), 0),  # a refusal is the answer, not a reason to retry
    )


def test_redis_accepts_a_client_with_the_ca_files(
    ca: CertificateAuthority, redis_tls_port: int
) -> None:
    with client(ca, redis_tls_port, with_cert=True) as r:
        assert r.ping() is True
        r.set("netthreads", "tls")
        assert r.get("netthreads") == b"tls"


def test_redis_refuses_a_client_without_a_certificate(
    ca: CertificateAuthority, redis_tls_port: int
) -> None:
    with (
        client(ca, redis_tls_port, with_cert=False) as r,
        pytest.raises(redis.exceptions.ConnectionError),
    ):
        r.ping()
