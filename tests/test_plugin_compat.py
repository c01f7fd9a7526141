"""The plugin next to other builds and plugins: free-threaded interpreters, the plugin disabled
(``-p no:netthreads``) with hook implementations left in a conftest, pytest-run-parallel.
"""

from __future__ import annotations

import _thread
import sys

import pytest

TIMEOUT = 120  # seconds for a whole inner run; every inner socket has its own timeout

NO_GIL_LINE = (
    "pytest-netthreads: the GIL is disabled (free-threaded build), on which this plugin is "
    "untested: lock tracking and the deadlock and lock-order detectors (--deadlock-timeout, "
    "--lock-order-check) are unverified here"
)


# -- free-threaded builds ---------------------------------------------------------------------


@pytest.mark.parametrize("gil", ["disabled", "enabled", "no _is_gil_enabled"])
def test_the_header_says_when_the_gil_is_disabled(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, gil: str
) -> None:
    # No free-threaded build can be had here: the interpreter's answer is what is faked.
    if gil == "no _is_gil_enabled":  # Python < 3.13
        monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)
    else:
        enabled = gil == "enabled"
        monkeypatch.setattr(sys, "_is_gil_enabled", lambda: enabled, raising=False)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    header = result.stdout.lines[: result.stdout.lines.index("collected 1 item")]
    if gil == "disabled":
        assert NO_GIL_LINE in header
    else:
        assert not [line for line in header if "GIL" in line]


# -- the header says what is on and what it patched ---------------------------------------

# Python 3.13 added the function Thread.start uses; threads started with it are tracked too.
_JOINABLE = "_thread.start_joinable_thread, " if hasattr(_thread, "start_joinable_thread") else ""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], None),
        (
            ["--socket-leak-check", "--thread-leak-grace=0.5"],
            "pytest-netthreads: --socket-leak-check (grace 0.5s); patched: "
            "threading.Thread.start, concurrent.futures.thread.ThreadPoolExecutor.__init__, "
            f"_thread.start_new_thread, {_JOINABLE}socket.socket.__init__ (by ThreadLeakChecker)",
        ),
        (
            ["--deadlock-timeout=0", "--lock-order-check"],
            "pytest-netthreads: --deadlock-timeout=0, --lock-order-check; patched: "
            "threading.Lock, threading.RLock, threading.Thread.join "
            "(by pytest-netthreads lock tracking)",
        ),
    ],
)
def test_the_header_lists_the_detectors_on_and_what_they_patched(
    pytester: pytest.Pytester, args: list[str], expected: str | None
) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=TIMEOUT)
    result.assert_outcomes(passed=1)
    header = result.stdout.lines[: result.stdout.lines.index("collected 1 item")]
    ours = [line for line in header if line.startswith("pytest-netthreads:")]
    assert ours == ([] if expected is None else [expected])


# -- hook implementations when the plugin is disabled -------------------------------------------

HOOKS = """
    seen = []

    def pytest_netthreads_server_started(server, item):
        seen.append(("server_started", item.name))

    def pytest_netthreads_thread_leaks(config, node, owner, leaks):
        seen.append(("thread_leaks", len(leaks)))
        return True

    def pytest_netthreads_socket_leaks(config, node, owner, leaks):
        seen.append(("socket_leaks", len(leaks)))
        return True

    def pytest_netthreads_deadlock_report(config, item, report):
        seen.append(("deadlock_report", report.kind))
        return True

    def pytest_netthreads_lock_order_report(config, item, report):
        seen.append(("lock_order_report", item))
        return True
"""


def _optional(hooks: str) -> str:
    return "\n    import pytest\n" + hooks.replace(
        "\n    def pytest_", "\n    @pytest.hookimpl(optionalhook=True)\n    def pytest_"
    )


def test_optionalhook_implementations_load_with_the_plugin_on_and_off(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(_optional(HOOKS))
    pytester.makepyfile(
        """
        import threading

        from conftest import seen

        release = threading.Event()

        def test_a_server(echo_server):
            pass

        def test_leaks_a_thread():
            threading.Thread(target=release.wait, args=(60,), daemon=True).start()

        def test_seen():
            assert seen == [("server_started", "test_a_server"), ("thread_leaks", 1)]

        def test_release():
            release.set()
        """
    )
    on = pytester.runpytest(
        "-p", "no:cacheprovider", "--thread-leak-check", "--thread-leak-grace=0"
    )
    on.assert_outcomes(passed=4)  # the conftest took the leak report over
    off = pytester.runpytest(
        "-p", "no:cacheprovider", "-p", "no:netthreads", "-k", "leaks or release"
    )
    off.assert_outcomes(passed=2, deselected=2)


def test_without_optionalhook_a_disabled_plugin_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HOOKS)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    off = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:netthreads")
    assert off.ret == pytest.ExitCode.INTERNAL_ERROR
    off.stdout.fnmatch_lines(["*unknown hook 'pytest_netthreads_*"])


# -- pytest-run-parallel ----------------------------------------------------------------------


def test_run_parallel_runs_socket_faults_tests_in_one_thread(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The suite's inner runs leave pytest-run-parallel out (conftest.py); this one needs it.
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:asyncio -p no:anyio")
    pytester.makeini("[pytest]\nthread_unsafe_fixtures =\n    my_global_state\n")
    pytester.makepyfile(
        """
        import socket

        import pytest

        from pytest_netthreads import faults

        @pytest.fixture
        def my_global_state():
            return []

        def test_one_faulted_connection(echo_server, socket_faults):
            socket_faults.add(faults.RecvChunks([1]), address=echo_server.address)
            with socket.create_connection(echo_server.address, timeout=10) as sock:
                sock.sendall(b"ab")
                assert sock.recv(10) == b"a"
            # One socket_faults for the test: in 4 threads at once it would see 4 sockets.
            assert len(socket_faults.sockets) == 1

        def test_the_users_own_list_is_kept(my_global_state):
            my_global_state.append(1)
            assert my_global_state == [1]

        def test_a_shared_echo_server(echo_server, num_parallel_threads):
            assert num_parallel_threads == 4
            with socket.create_connection(echo_server.address, timeout=10) as sock:
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "error", "-v", "--parallel-threads=4",
        "--thread-leak-check", "--socket-leak-check", timeout=TIMEOUT,
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*::test_one_faulted_connection PASSED [[]thread-unsafe[]]: uses thread-unsafe "
            "fixture(s): {'socket_faults'}*",
            "*::test_the_users_own_list_is_kept PASSED [[]thread-unsafe[]]: uses thread-unsafe "
            "fixture(s): {'my_global_state'}*",
            "*::test_a_shared_echo_server PARALLEL PASSED*",
        ]
    )
