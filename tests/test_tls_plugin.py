"""The TLS fixtures (tls_ca, tls_client_context, tls_echo_server), end to end via pytester."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

import pytest

pytest_plugins = ["pytester"]

TIMEOUT = 120  # seconds for a whole inner run; every inner socket has its own timeout


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "error", *args, timeout=TIMEOUT
    )


def test_tls_echo_server_with_the_client_context(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket

        seen = []

        def round_trip(server, context, hostname):
            raw = socket.create_connection(server.address, timeout=10)
            with context.wrap_socket(raw, server_hostname=hostname) as tls:
                tls.sendall(b"ping")
                assert tls.recv(4) == b"ping"
                return tls.version()

        def test_one(tls_echo_server, tls_client_context, tls_ca):
            version = round_trip(tls_echo_server, tls_client_context, "localhost")
            (record,) = tls_echo_server.wait_for_connections(1, closed=True)
            assert record.tls["version"] == version
            assert record.tls["sni"] == "localhost"
            assert record.bytes_in == record.bytes_out == 4
            assert tls_echo_server.url.startswith("https://127.0.0.1:")
            seen.append((tls_echo_server.port, tls_ca, tls_client_context))

        def test_two(tls_echo_server, tls_client_context, tls_ca):
            round_trip(tls_echo_server, tls_client_context, "127.0.0.1")
            seen.append((tls_echo_server.port, tls_ca, tls_client_context))

        def test_fresh_server_and_context_one_ca():
            (port1, ca1, ctx1), (port2, ca2, ctx2) = seen
            assert port1 != port2
            assert ca1 is ca2
            assert ctx1 is not ctx2
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=3)


def test_refused_certificates_do_not_fail_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket, ssl
        import pytest
        from pytest_netthreads import handlers
        from pytest_netthreads.tls import PRESETS, VERIFY_CODES

        @pytest.mark.parametrize("preset", [p for p in PRESETS if p != "valid"])
        def test_client_refuses(server_factory, tls_ca, tls_client_context, preset):
            srv = server_factory(handlers.echo, tls=tls_ca.server_context(preset))
            raw = socket.create_connection(srv.address, timeout=10)
            with raw, pytest.raises(ssl.SSLCertVerificationError) as info:
                tls_client_context.wrap_socket(raw, server_hostname="localhost")
            assert info.value.verify_code in VERIFY_CODES[preset]
            (record,) = srv.wait_for_connections(1, closed=True)
            assert record.how_closed == "handshake-failed"
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=6)


def test_server_factory_tls_true_and_mutual_tls(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket, ssl
        import httpx
        import pytest
        from pytest_netthreads import handlers

        def test_tls_true_uses_the_session_ca(server_factory, tls_client_context):
            srv = server_factory(handlers.HTTPResponder(b"hello"), tls=True)
            assert srv.url.startswith("https://")
            with httpx.Client(verify=tls_client_context, timeout=10) as client:
                assert client.get(srv.url + "/x").content == b"hello"

        def test_mutual_tls(server_factory, tls_ca):
            srv = server_factory(
                handlers.echo, tls=tls_ca.server_context(client_certs="required")
            )
            good = tls_ca.client_context(client_cert=True)
            with good.wrap_socket(
                socket.create_connection(srv.address, timeout=10), server_hostname="localhost"
            ) as tls:
                tls.sendall(b"mtls")
                assert tls.recv(4) == b"mtls"
            with pytest.raises(ssl.SSLError, match="(?i)certificate required"):
                with tls_ca.client_context().wrap_socket(
                    socket.create_connection(srv.address, timeout=10),
                    server_hostname="localhost",
                ) as tls:
                    tls.sendall(b"nope")
                    tls.recv(4)
            first, second = sorted(
                srv.wait_for_connections(2, closed=True), key=lambda r: r.index
            )
            assert "client.netthreads.test" in str(first.tls["client_cert"]["subjectAltName"])
            assert second.how_closed == "handshake-failed"
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)


def test_handler_error_after_the_handshake_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket

        def parse(conn):
            data = conn.recv(100)
            raise ValueError("bad request over tls %r" % data)

        def test_client(server_factory, tls_client_context):
            srv = server_factory(parse, tls=True)
            raw = socket.create_connection(srv.address, timeout=10)
            with tls_client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"BAD")
                srv.wait_for_connections(1, closed=True)
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*HandlerError: 1 error(s) in server parse@127.0.0.1:*",
            "*ValueError in connection #0 from 127.0.0.1:*",
            "*ValueError: bad request over tls b'BAD'",
        ]
    )


def test_ca_files_are_private_and_removed_at_session_end(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, stat

        def test_paths(tls_ca):
            cert, key = tls_ca.server_cert_files()
            paths = [tls_ca.ca_bundle_path(), cert, key, *tls_ca.client_cert_files()]
            for path in paths:
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            with open("paths.txt", "w") as f:
                f.write("\\n".join(paths + [tls_ca.files_dir]))
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    paths = (pytester.path / "paths.txt").read_text().splitlines()
    assert len(paths) == 6
    assert [p for p in paths if os.path.exists(p)] == []


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The umask (inherited by the inner pytest) set to ``mask`` for the block."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


HANDSHAKE = """
import socket

def test_handshake(tls_echo_server, tls_client_context):
    raw = socket.create_connection(tls_echo_server.address, timeout=10)
    with tls_client_context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"k")
        assert tls.recv(1) == b"k"
"""


def test_key_log_file_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(HANDSHAKE)
    with umask(0o022):  # what most shells have: ssl would create the file 0644
        result = run(pytester, "--tls-keylog-file=keys.log")
    result.assert_outcomes(passed=1)
    assert stat.S_IMODE((pytester.path / "keys.log").stat().st_mode) == 0o600
    lines = (pytester.path / "keys.log").read_text().splitlines()
    assert sum(line.startswith("CLIENT_TRAFFIC_SECRET_0 ") for line in lines) == 2

    # The ini key, relative to the ini file; and nothing is logged without either.
    (pytester.path / "keys.log").unlink()
    pytester.makeini("[pytest]\ntls_keylog_file = from-ini.log\n")
    with umask(0o022):
        run(pytester).assert_outcomes(passed=1)
    assert stat.S_IMODE((pytester.path / "from-ini.log").stat().st_mode) == 0o600
    assert (pytester.path / "from-ini.log").read_text().count("CLIENT_TRAFFIC_SECRET_0") == 2
    (pytester.path / "from-ini.log").unlink()
    pytester.makeini("[pytest]\n")
    run(pytester).assert_outcomes(passed=1)
    assert sorted(p.name for p in pytester.path.glob("*.log")) == []


def test_key_log_file_is_relative_to_where_pytest_started(pytester: pytest.Pytester) -> None:
    # Not to the directory a test (or fixture) has changed to by the time the CA is made.
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(autouse=True)
        def elsewhere(monkeypatch, tmp_path):
            monkeypatch.chdir(tmp_path)
        """
    )
    # No session-scoped tls_ca here: it would be set up before the autouse fixture.
    pytester.makepyfile(
        """
        import socket, ssl

        def test_handshake(tls_echo_server):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            raw = socket.create_connection(tls_echo_server.address, timeout=10)
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"k")
                assert tls.recv(1) == b"k"
        """
    )
    run(pytester, "--tls-keylog-file=keys.log").assert_outcomes(passed=1)
    # The server's end (the client context is not the CA's).
    assert (pytester.path / "keys.log").read_text().count("CLIENT_TRAFFIC_SECRET_0") == 1
    assert [p.name for p in pytester.path.rglob("*.log")] == ["keys.log"]


def test_a_bad_key_log_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    (pytester.path / "adir").mkdir()
    result = run(pytester, "--tls-keylog-file=adir")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --tls-keylog-file '*adir' cannot be opened for "
            "appending: Is a directory"
        ]
    )
    # A symbolic link (planted in a shared directory, it would redirect the secrets).
    (pytester.path / "link.log").symlink_to(pytester.path / "target.log")
    pytester.makeini("[pytest]\ntls_keylog_file = link.log\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: ini tls_keylog_file (tox.ini) *link.log'*is a symbolic link*"]
    )
    assert not (pytester.path / "target.log").exists()


def test_tls_costs_nothing_when_unused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_plain(echo_server):
            assert "pytest_netthreads.tls" not in sys.modules
            assert "pytest_netthreads.servers.tls_accept" not in sys.modules
        """
    )
    run(pytester).assert_outcomes(passed=1)
