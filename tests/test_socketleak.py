"""The socket-leak check: directly, and ``--socket-leak-check`` end to end."""

from __future__ import annotations

import gc
import socket
import ssl
import warnings
import weakref

import pytest

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads.detect.threadleak import ThreadLeakChecker, ThreadLeakError

pytest_plugins = ["pytester"]


def test_an_open_socket_is_reported_with_where_it_was_created() -> None:
    with pytest.raises(ThreadLeakError) as info, ThreadLeakChecker(sockets=True):
        kept = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        kept.bind(("127.0.0.1", 0))
        closed = socket.socket()
        closed.close()
    assert [leak.socket for leak in info.value.sockets] == [kept]
    kept.close()
    message = str(info.value)
    assert "1 socket(s) created by the checked block still open after its teardown:" in message
    assert "AF_INET SOCK_STREAM 127.0.0.1:" in message
    assert f"created at {__file__}:" in message
    assert "kept = socket.socket(socket.AF_INET, socket.SOCK_STREAM)" in message


class _Pool:
    """A pool that closes its sockets in a finalizer, as urllib3's connection pools do."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.me = self  # a reference cycle: only the garbage collector frees it
        weakref.finalize(self, sock.close)


def test_a_socket_only_a_reference_cycle_keeps_open_is_not_reported() -> None:
    gc.disable()  # no collection may close it before the check does
    try:
        with ThreadLeakChecker(sockets=True):
            pool = _Pool(socket.socket())
            del pool  # unreachable now, but still open until a collection
    finally:
        gc.enable()


def test_a_socket_still_held_is_reported_after_the_collection() -> None:
    holder: list[object] = []
    with pytest.raises(ThreadLeakError) as info, ThreadLeakChecker(sockets=True):
        holder.append(_Pool(socket.socket()))
    pool = holder.pop()
    assert isinstance(pool, _Pool)
    assert [leak.socket for leak in info.value.sockets] == [pool.sock]
    pool.sock.close()


def test_server_sockets_closed_at_stop_and_tls_wrapped_sockets_are_not_leaks() -> None:
    with ThreadLeakChecker(sockets=True, grace=5):
        with ThreadedServer(handlers.echo) as srv:
            for _ in range(3):
                with socket.create_connection(srv.address, timeout=30) as client:
                    client.sendall(b"ping")
                    assert client.recv(4) == b"ping"
        a, b = socket.socketpair()
        a.close()
        b.close()
        ctx = ssl.create_default_context()
        raw = socket.socket()
        wrapped = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        wrapped.close()


def test_socket_leak_check_end_to_end(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_socks="""
        import socket
        import pytest

        kept = []

        @pytest.fixture(scope="module")
        def listener():
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen()
            kept.append(s)
            yield s      # closed by nobody: reported when the module ends

        def test_leaks_a_client(listener):
            kept.append(socket.create_connection(listener.getsockname(), timeout=30))

        def test_closes_its_sockets(echo_server):
            with socket.create_connection(echo_server.address, timeout=30) as c:
                c.sendall(b"x")
                assert c.recv(1) == b"x"

        def test_last():
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--socket-leak-check", timeout=120
    )
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_client*",
            "1 socket(s) created by test_socks.py::test_leaks_a_client still open after its "
            "teardown:",
            "--- socket fd=* AF_INET SOCK_STREAM 127.0.0.1:* -> 127.0.0.1:*",
            "created at */test_socks.py:15 in test_leaks_a_client",
            "*ERROR at teardown of test_last*",
            "1 socket(s) created by module-scoped fixture 'listener' (test_socks.py) still open*",
            "--- socket fd=* AF_INET SOCK_STREAM 127.0.0.1:* (not connected)",
            "created at */test_socks.py:8 in listener",
        ]
    )
    # Threads are not checked with --socket-leak-check alone.
    assert "thread(s) started by" not in result.stdout.str()


def test_allow_socket_leak_marker_and_socket_leak_ignore(pytester: pytest.Pytester) -> None:
    """The socket check's knobs beside the thread check's: a marker (all, or by pattern) and an
    ini list of patterns, searched in the description and the creation site."""
    pytester.makeini(
        """
        [pytest]
        socket_leak_ignore =
            in open_ignored_by_ini$
        """
    )
    pytester.makepyfile(
        test_allow="""
        import socket
        import pytest

        kept = []

        def udp():
            kept.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

        @pytest.mark.allow_socket_leak
        def test_all_allowed():
            udp()

        @pytest.mark.allow_socket_leak("SOCK_DGRAM")
        def test_allowed_by_description():
            udp()

        @pytest.mark.allow_socket_leak("SOCK_STREAM")
        def test_pattern_does_not_match():
            udp()

        def open_ignored_by_ini():
            kept.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

        def test_ignored_by_ini():
            open_ignored_by_ini()

        def test_reported():
            udp()
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--socket-leak-check", timeout=120
    )
    result.assert_outcomes(passed=5, errors=2)
    text = result.stdout.str()
    assert "ERROR at teardown of test_pattern_does_not_match" in text
    assert "ERROR at teardown of test_reported" in text
    for allowed in ("test_all_allowed", "test_allowed_by_description", "test_ignored_by_ini"):
        assert f"ERROR at teardown of {allowed}" not in text


def test_a_bad_socket_pattern_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsocket_leak_ignore = (unclosed\n")
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess("--socket-leak-check", timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*socket_leak_ignore: '(unclosed' is not a valid regular*"])


def test_socket_hook_can_take_over(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_netthreads_socket_leaks(config, node, owner, leaks):
            for leak in leaks:
                print("MINE", leak.created_at)
                leak.socket.close()
            return True
        """
    )
    pytester.makepyfile(
        test_x="""
        import socket

        def test_x():
            global s
            s = socket.socket()
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-s", "--socket-leak-check", timeout=120
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*MINE */test_x.py:5 in test_x*"])


def test_a_client_librarys_socket_is_blamed_on_the_line_that_used_the_library(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_lib="""
        import urllib3
        from pytest_netthreads import handlers

        pools = []

        def test_keeps_a_pool_open(server_factory):
            srv = server_factory(handlers.HTTPResponder(b"hi"))
            pool = urllib3.HTTPConnectionPool(srv.host, srv.port, timeout=30, retries=False)
            pools.append(pool)  # never closed: its kept-alive connection stays open
            assert pool.request("GET", "/").data == b"hi"
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--socket-leak-check", timeout=120
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "1 socket(s) created by test_lib.py::test_keeps_a_pool_open still open*",
            "--- socket fd=* AF_INET SOCK_STREAM 127.0.0.1:* -> 127.0.0.1:*",
            "created at */test_lib.py:10 in test_keeps_a_pool_open",
            "creation stack (most recent call last):",
            '  File "*/test_lib.py", line 10, in test_keeps_a_pool_open',
            '  File "*urllib3*", line *',
        ]
    )


# A thread still running at the test's teardown closes its socket a moment later (its delay
# stands for the work it does first; the checks wait by joining it, not by timing).
CLOSING_THREADS = """
import socket
import threading
import time

import pytest

kept = []

def close_when_released(sock, release):
    release.wait(120)
    time.sleep(0.2)
    sock.close()

def exit_when_released(sock, release):
    release.wait(120)
    kept.append(sock)  # exits, leaving the socket open

@pytest.fixture
def release():
    event = threading.Event()
    yield event
    event.set()  # the test's thread is still running when its teardown ends

def bound():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock

def test_thread_closes_its_socket(release):
    threading.Thread(target=close_when_released, args=(bound(), release)).start()

@pytest.mark.allow_thread_leak
def test_allowed_thread_closes_its_socket(release):
    threading.Thread(target=close_when_released, args=(bound(), release)).start()

def test_thread_exits_leaving_its_socket_open(release):
    threading.Thread(target=exit_when_released, args=(bound(), release)).start()
"""


@pytest.mark.parametrize(
    "options",
    [["--socket-leak-check"], ["--socket-leak-check", "--thread-leak-check"]],
    ids=["sockets", "sockets+threads"],
)
def test_sockets_a_tests_exiting_thread_closes_within_the_grace_are_not_leaks(
    pytester: pytest.Pytester, options: list[str]
) -> None:
    pytester.makepyfile(test_closing=CLOSING_THREADS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", *options, "--thread-leak-grace=60", timeout=300
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_thread_exits_leaving_its_socket_open*",
            "1 socket(s) created by test_closing.py::test_thread_exits_leaving_its_socket_open "
            "still open after its teardown:",
            "--- socket fd=* AF_INET SOCK_STREAM 127.0.0.1:* (not connected)",
            "created at */test_closing.py:* in bound",
        ]
    )
    assert "ERROR at teardown of test_thread_closes_its_socket" not in result.stdout.str()
    assert "ERROR at teardown of test_allowed_thread" not in result.stdout.str()


def test_a_socket_a_running_thread_keeps_open_is_reported_after_the_grace(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import threading

        STOP = threading.Event()

        def pytest_unconfigure(config):
            STOP.set()
        """
    )
    pytester.makepyfile(
        test_holding="""
        import socket
        import threading
        from conftest import STOP

        def hold(sock):
            with sock:
                STOP.wait(120)

        def test_thread_holds_its_socket():
            sock = socket.socket()
            threading.Thread(target=hold, args=(sock,), name="holder", daemon=True).start()
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--socket-leak-check", "--thread-leak-grace=0.1", timeout=120
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "1 socket(s) created by test_holding.py::test_thread_holds_its_socket still open*",
            "created at */test_holding.py:10 in test_thread_holds_its_socket",
        ]
    )
    assert "thread(s) started by" not in result.stdout.str()  # threads are not checked


def test_the_check_holds_sockets_weakly_a_dropped_one_is_finalized_as_without_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_dropped="""
        import gc
        import socket
        import weakref
        import pytest

        def test_dropped_socket_is_closed_by_its_finalizer():
            sock = socket.socket()
            ref = weakref.ref(sock)
            with pytest.warns(ResourceWarning, match="unclosed <socket.socket"):
                del sock
                gc.collect()
            assert ref() is None
        """
    )
    for options in (["--socket-leak-check"], []):
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-W", "error", *options, timeout=120
        )
        result.assert_outcomes(passed=1)


# -- sockets garbage-collected without being closed (collected=True) ----------------------


def _dropped_connection() -> None:
    """A real connection whose client socket nobody closes: collected on return."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=30)
        conn, _ = server.accept()
        conn.close()
        client.getsockname()


def test_a_socket_collected_unclosed_is_reported_and_python_still_warns() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(ThreadLeakError) as info:
            with ThreadLeakChecker(sockets=True, collected=True):
                _dropped_connection()
                closed = socket.socket()
                closed.close()
                del closed
    unclosed = [str(w.message) for w in caught if w.category is ResourceWarning]
    assert len(unclosed) == 1 and unclosed[0].startswith("unclosed <socket.socket fd=")
    [leak] = info.value.sockets
    assert leak.collected and leak.socket is None
    assert leak.description.startswith("fd=") and "AF_INET SOCK_STREAM 127.0.0.1:" in (
        leak.description
    )
    assert leak.created_at.startswith(f"{__file__}:") and leak.created_at.endswith(
        "in _dropped_connection"
    )
    message = str(info.value)
    assert (
        "1 socket(s) created by the checked block garbage-collected without being closed "
        "(Python closed them, with a ResourceWarning):" in message
    )
    assert "client = socket.create_connection(server.getsockname(), timeout=30)" in message


def test_without_collected_a_socket_collected_unclosed_is_not_reported() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with ThreadLeakChecker(sockets=True):
            _dropped_connection()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"sockets": True, "collected": "yes"}, TypeError),
        ({"sockets": True, "collected": 1}, TypeError),
        ({"collected": True}, ValueError),
    ],
)
def test_collected_is_checked(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match="collected"):
        ThreadLeakChecker(**kwargs)  # type: ignore[arg-type]


COLLECTED = """
import socket

import pytest


def connect():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname(), timeout=30)
    conn, _ = server.accept()
    conn.close()
    server.close()
    return client


def open_ignored_by_ini():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def test_drops_a_connection():
    client = connect()
    client.getsockname()  # used, never closed: collected when the test returns


@pytest.mark.allow_socket_leak
def test_allowed():
    connect()


@pytest.mark.allow_socket_leak("AF_INET6")
def test_allowed_by_another_pattern_only():
    connect()


def test_ignored():
    open_ignored_by_ini()


def test_closes():
    with connect():
        pass
"""


@pytest.mark.parametrize("how", ["option", "ini"])
def test_socket_leak_collected_end_to_end(pytester: pytest.Pytester, how: str) -> None:
    pytester.makepyfile(test_collected=COLLECTED)
    ini = "[pytest]\nsocket_leak_ignore =\n    in open_ignored_by_ini$\n"
    args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-W", "ignore::ResourceWarning"]
    if how == "ini":
        ini += "socket_leak_collected = true\n"
    else:
        args.append("--socket-leak-collected")
    pytester.makeini(ini)
    result = pytester.runpytest_subprocess(*args, timeout=120)
    result.assert_outcomes(passed=5, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*--socket-leak-check, --socket-leak-collected (grace 1s); patched: *"
            "socket.socket.__del__ (by ThreadLeakChecker)",
            "*_ ERROR at teardown of test_drops_a_connection _*",
            "1 socket(s) created by test_collected.py::test_drops_a_connection garbage-collected "
            "without being closed (Python closed them, with a ResourceWarning):",
            "--- socket fd=* AF_INET SOCK_STREAM 127.0.0.1:* -> 127.0.0.1:*",
            "created at */test_collected.py:8 in connect",
            "creation stack (most recent call last):",
            '  File "*/test_collected.py", line 22, in test_drops_a_connection',
            "*_ ERROR at teardown of test_allowed_by_another_pattern_only _*",
            "1 socket(s) created by test_collected.py::test_allowed_by_another_pattern_only "
            "garbage-collected without being closed*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "socket leaks: 2",
            "  test_collected.py::test_drops_a_connection: collected unclosed: fd=* AF_INET "
            "SOCK_STREAM 127.0.0.1:* -> 127.0.0.1:*, created at test_collected.py:8 in connect, "
            "created by test_collected.py:22 in test_drops_a_connection",
        ]
    )


@pytest.mark.parametrize("option", ["--socket-leak-check", "--socket-leak-collected"])
def test_resource_warnings_as_errors_fail_as_without_the_check(
    pytester: pytest.Pytester, option: str
) -> None:
    """The user's ``-W error`` (or ``filterwarnings = error``) still turns Python's
    ResourceWarning into the same failure; the collected mode adds its report."""
    pytester.makepyfile(test_collected=COLLECTED)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", "-W", "error", option, timeout=120
    )
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 4  # every test that drops a socket, allowed or not
    assert outcomes.get("errors", 0) == (3 if option == "--socket-leak-collected" else 0)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_collected.py::test_drops_a_connection - pytest.PytestUnraisable*",
        ]
    )
    assert "ResourceWarning: unclosed <socket.socket" in result.stdout.str()
