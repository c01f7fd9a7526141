"""The server fixtures, end to end through pytester."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time

import pytest

pytest_plugins = ["pytester"]


def test_echo_server_fixture_is_listening_and_fresh_per_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket, threading

        ports = []

        def test_one(echo_server):
            host, port = echo_server.address
            assert (echo_server.host, echo_server.port) == (host, port)
            with socket.create_connection(echo_server.address, timeout=5) as s:
                s.sendall(b"ping")
                assert s.recv(4) == b"ping"
            ports.append(port)

        def test_two(echo_server):
            assert echo_server.running
            ports.append(echo_server.port)

        def test_fresh():
            assert len(ports) == 2
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_handler_error_fails_the_test_with_the_server_traceback(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import socket

        def parse(conn):
            data = conn.recv(100)
            raise ValueError("unparseable request %r" % data)

        def test_client(server_factory):
            srv = server_factory(parse)
            with socket.create_connection(srv.address, timeout=5) as s:
                s.sendall(b"BAD")
                assert s.recv(10) == b""
            srv.wait_for_connections(1, closed=True)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    # A failure of the test itself (call phase), not only an error at teardown.
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*HandlerError: 1 error(s) in server parse@127.0.0.1:*",
            "*ValueError in connection #0 from 127.0.0.1:*",
            "*in parse*",
            "*ValueError: unparseable request b'BAD'*",
        ]
    )


def test_handler_error_after_the_call_fails_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket, threading

        gate, entered = threading.Event(), threading.Event()

        def late(conn):
            entered.set()
            gate.wait(10)
            raise RuntimeError("too late")

        def test_client(server_factory):
            srv = server_factory(late)
            socket.create_connection(srv.address, timeout=5).close()
            assert entered.wait(10)
            gate.set()
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    # Raised in the call phase when it was fast enough, at teardown at the latest.
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 1
    result.stdout.fnmatch_lines(["*RuntimeError: too late*"])


def test_a_handler_that_raises_after_the_body_returned_always_fails_the_test(
    pytester: pytest.Pytester,
) -> None:
    """The docs' promise, tried as a user would: the client sends and the body returns at
    once, before the handler has even started. It used to stay green in 13 of 15 runs."""
    pytester.makepyfile(
        """
        import socket
        import pytest

        def parse(conn):
            request = conn.recv(100)
            raise ValueError(f"cannot parse {request!r}")

        @pytest.mark.parametrize("round", range(20))
        @pytest.mark.parametrize("concurrency", ["thread", "pool"])
        def test_client(server_factory, concurrency, round):
            srv = server_factory(parse, concurrency=concurrency)
            with socket.create_connection(srv.address, timeout=5) as client:
                client.sendall(b"BAD")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    # Each test fails in its call phase, or passes it and errors at teardown.
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 40
    result.stdout.fnmatch_lines(["*ValueError: cannot parse b'BAD'*"])


@pytest.mark.parametrize("fixture", ["server_factory", "fault_proxy"])
def test_ctrl_c_with_a_handler_that_ignores_stop_exits_as_interrupted(
    pytester: pytest.Pytester, fixture: str
) -> None:
    ready = pytester.path / "ready"
    pytester.makepyfile(
        f"""
        import pathlib, socket, time

        def stubborn(conn):
            while True:
                time.sleep(0.05)

        def test_hang(server_factory, fault_proxy):
            srv = server_factory(stubborn, stop_timeout=1.0)
            address = srv.address
            if {fixture!r} == "fault_proxy":
                address = fault_proxy(srv, stop_timeout=1.0).address
            client = socket.create_connection(address, timeout=60)
            client.sendall(b"x")
            srv.wait_for_connections(1)
            pathlib.Path({str(ready)!r}).touch()
            client.settimeout(0.1)
            # Short waits: a SIGINT that lands between two bytecodes, just before a blocking
            # call, is only acted on when that call returns (CPython checks for signals
            # between bytecodes; the system call was not running to be interrupted).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    client.recv(1)
                    break
                except socket.timeout:
                    pass
        """
    )
    pytester.makeconftest(
        """
        import faulthandler, signal, sys
        faulthandler.register(signal.SIGUSR1, all_threads=True, file=sys.__stderr__)
        """
    )
    # A shell's background job (`cmd &`, nohup) starts with SIGINT ignored, and a child
    # inherits that: Python then never installs its handler. Take SIGINT back first.
    main = (
        "import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.exit(pytest.console_main())"
    )
    proc = pytester.popen(
        [sys.executable, "-c", main, "-p", "no:cacheprovider"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists()
        signals = " ".join(  # for the failure message: how the child takes SIGINT
            line.replace("\t", " ")
            for who in (proc.pid, "self")
            for line in pathlib.Path(f"/proc/{who}/status").read_text().splitlines()
            if line.startswith(("SigBlk", "SigIgn", "SigCgt"))
        )
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say where it is stuck (the conftest's dump)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(
                f"still running 60 s after SIGINT ({signals}; then self):\n"
                f"{out.decode()}\n{err.decode()}"
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, (out, err)
    assert b"Traceback" not in err, err
    assert b"stopped after the interrupt: ServerStopTimeout" in err
    assert b"KeyboardInterrupt" in out


def test_blocked_handler_does_not_hang_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket

        def never_returns(conn):
            conn.recv(1)          # woken by stop()'s shutdown
            conn.stopping.wait()  # returns once the server stops

        clients = []

        def test_client(server_factory):
            srv = server_factory(never_returns, concurrency="pool", max_workers=2)
            for _ in range(5):
                clients.append(socket.create_connection(srv.address, timeout=5))
            srv.wait_for_connections(5)

        def test_after():
            for c in clients:
                assert c.recv(1) == b""
                c.close()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)


def test_stuck_handler_is_reported_by_name(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket, threading

        forever, entered = threading.Event(), threading.Event()

        def stuck(conn):
            entered.set()
            forever.wait()

        def test_client(server_factory):
            srv = server_factory(stuck, stop_timeout=0.5, name="stuckserver")
            socket.create_connection(srv.address, timeout=5).close()
            assert entered.wait(10)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ServerStopTimeout: server stuckserver: 1 worker thread(s) still running*",
            "*thread 'netthreads?stuckserver?#0', current stack:*",
            "*forever.wait()*",
        ]
    )


def test_server_factory_tls_needs_a_context_and_bad_options_are_named(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_netthreads import handlers

        def test_bad_tls(server_factory):
            with pytest.raises(TypeError, match="tls must be True, False or an ssl.SSLContext"):
                server_factory(handlers.echo, tls="yes")

        def test_bad_option(server_factory):
            with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
                server_factory(handlers.echo, colour="red")

        def test_several_servers(server_factory):
            a = server_factory(handlers.echo)
            b = server_factory(handlers.KeyValue(), concurrency="pool")
            c = server_factory(handlers.sink, unix=True)
            assert len({a.address, b.address, c.address}) == 3
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_server_started_hook(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        seen = []

        def pytest_netthreads_server_started(config, server, item):
            seen.append((config.rootpath.name, item.name, server.port))
        """
    )
    pytester.makepyfile(
        """
        from conftest import seen

        def test_a(echo_server, request):
            root = request.config.rootpath.name
            assert seen == [(root, "test_a", echo_server.port)]
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_fixtures_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket, pytest

        @pytest.mark.parametrize("n", range(8))
        def test_echo(echo_server, n):
            with socket.create_connection(echo_server.address, timeout=5) as s:
                s.sendall(b"%d" % n)
                assert s.recv(10) == b"%d" % n
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=8)


def test_fixture_servers_belong_to_the_innermost_running_test(
    pytester: pytest.Pytester, server_factory: object
) -> None:
    import socket

    from pytest_netthreads import handlers

    outer = server_factory(handlers.echo)  # type: ignore[operator]
    pytester.makeconftest(
        """
        started = []

        def pytest_netthreads_server_started(server, item):
            started.append((item.name, server.name.split("@")[0]))
        """
    )
    pytester.makepyfile(
        """
        import socket
        from conftest import started

        def boom(conn):
            conn.recv(10)
            raise ValueError("inner handler")

        def test_inner(server_factory, echo_server, tls_echo_server):
            srv = server_factory(boom)
            with socket.create_connection(srv.address, timeout=5) as s:
                s.sendall(b"x")
                s.recv(10)
            srv.wait_for_connections(1, closed=True)

        def test_owners():
            assert started == [
                ("test_inner", "echo"), ("test_inner", "echo"), ("test_inner", "boom")
            ]
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(failed=1, passed=1)  # the inner test failed, not this one
    result.stdout.fnmatch_lines(["*HandlerError: 1 error(s) in server boom@*"])
    with socket.create_connection(outer.address, timeout=5) as s:  # type: ignore[attr-defined]
        s.sendall(b"still mine")
        assert s.recv(10) == b"still mine"
