"""The fault_proxy and socket_faults fixtures, end to end with pytester (in subprocesses)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

_SUBPROCESS_TIMEOUT = 120


def test_fault_proxy_fixture_applies_faults_and_stops_at_teardown(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import socket
        from pytest_netthreads import faults
        from pytest_netthreads._runtime.reactor import get_reactor

        PROXIES = []

        def test_reset(echo_server, fault_proxy):
            proxy = fault_proxy(echo_server, faults.ResetPeer(after_bytes=0), seed=3)
            PROXIES.append(proxy)
            assert proxy.seed == 3
            try:  # the reset may even beat connect() to it
                with socket.create_connection(proxy.address, timeout=10) as sock:
                    sock.recv(1)
            except ConnectionResetError:
                pass
            else:
                raise AssertionError("no reset")

        def test_stopped_after_the_test():
            (proxy,) = PROXIES
            # It let go of the shared event loop: no socket, no hold left behind.
            reactor = get_reactor()
            assert reactor.holds == 0 and reactor.registered == 0
            try:
                socket.create_connection(proxy.address, timeout=10).close()
            except ConnectionRefusedError:
                pass
            else:
                raise AssertionError("the proxy still listens")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=_SUBPROCESS_TIMEOUT)
    result.assert_outcomes(passed=2)


def test_a_failed_test_reports_the_seed_and_the_fault_log(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        from pytest_netthreads import faults

        def test_client_gives_up(echo_server, fault_proxy):
            proxy = fault_proxy(echo_server, faults.Timeout(after_bytes=2), seed=1234)
            with socket.create_connection(proxy.address, timeout=0.3) as sock:
                sock.sendall(b"hello")
                assert sock.recv(10) + sock.recv(10) == b"hello"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=_SUBPROCESS_TIMEOUT)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- fault proxy 127.0.0.1:*->127.0.0.1:* (call) -*",
            "*seed=1234*",
            "*#0 downstream @2: drop from here Timeout(after_bytes=2*",
            "*replay with: pytest --fault-seed=1234*",
        ]
    )


def test_fault_seed_option_and_ini_seed_every_proxy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_seed(echo_server, fault_proxy):
            assert fault_proxy(echo_server).seed == 99
            assert fault_proxy(echo_server, seed=5).seed == 5
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--fault-seed=99", timeout=_SUBPROCESS_TIMEOUT
    )
    result.assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nfault_seed = 99\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=_SUBPROCESS_TIMEOUT)
    result.assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nfault_seed = soon\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=_SUBPROCESS_TIMEOUT)
    result.stderr.fnmatch_lines(["ERROR: ini fault_seed (tox.ini) must be an int, got 'soon'"])


def test_an_error_in_a_proxy_callback_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        from pytest_netthreads.faults import _connection

        def test_broken(echo_server, fault_proxy, monkeypatch):
            def broken(*args):
                raise RuntimeError("bug inside the proxy")

            # The no-fault path and the general one.
            monkeypatch.setattr(_connection.Side, "forward", broken)
            monkeypatch.setattr(_connection.Pipe, "read", broken)
            proxy = fault_proxy(echo_server)
            with socket.create_connection(proxy.address, timeout=10) as sock:
                sock.sendall(b"x")
                try:
                    sock.recv(1)
                except ConnectionResetError:
                    pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=_SUBPROCESS_TIMEOUT)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ProxyError: 1 error(s) in fault proxy *seed=*",
            "*RuntimeError in connection #0*",
            "*bug inside the proxy*",
        ]
    )


def test_socket_faults_fixture_is_undone_after_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        from pytest_netthreads import faults
        from pytest_netthreads.faults.insocket import patched

        def test_faulted(echo_server, socket_faults):
            socket_faults.add(faults.RecvChunks([1], cycle=True), address=echo_server.address)
            with socket.create_connection(echo_server.address, timeout=10) as sock:
                sock.sendall(b"ab")
                assert sock.recv(10) == b"a"
                assert sock.recv(10) == b"b"

        def test_clean_afterwards(echo_server):
            assert not patched()
            with socket.create_connection(echo_server.address, timeout=10) as sock:
                sock.sendall(b"ab")
                data = b""
                while len(data) < 2:
                    data += sock.recv(10)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=_SUBPROCESS_TIMEOUT)
    result.assert_outcomes(passed=2)
