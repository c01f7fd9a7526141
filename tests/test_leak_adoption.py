"""Switching the detectors on in a big suite: warn levels, a baseline of known leaks, findings
grouped, "started by" the user's frame, leaks in xfail tests, library worker caches.

Real pytest sessions in subprocesses (each bounded by ``timeout=``), real threads, sockets
and locks; the threads a leaking inner test starts wait on an event with a timeout, so that
none outlives its inner process for long.
"""

from __future__ import annotations

import pathlib
import textwrap

import pytest

import pytest_netthreads
import pytest_netthreads.plugin
from pytest_netthreads._runtime.stacks import where_within
from pytest_netthreads.detect.findings import (
    Baseline,
    BaselineEntry,
    BaselineError,
    NetthreadsWarning,
    normalise_name,
    short_site,
)
from pytest_netthreads.detect.threadleak import IDLE_WORKER_CACHES

RUN_TIMEOUT = 120
BASE = ("-p", "no:cacheprovider", "-p", "no:randomly", "--thread-leak-grace=0.1")

# A client library inside the rootdir, started from a conftest fixture: three tests leak
# the same thread; a fourth leaks a socket.
CONFTEST = """
import socket
import threading

import pytest

from somelib import transport

STOP = threading.Event()


@pytest.fixture
def client():
    yield transport.connect(STOP)


@pytest.fixture
def raw_socket():
    sock = socket.socket()
    transport.KEPT.append(sock)
    yield sock
"""
TRANSPORT = """
import threading

KEPT = []


def connect(stop):
    worker = threading.Thread(target=stop.wait, args=(30,), name=f"Thread-{len(KEPT)} (io)",
                              daemon=True)
    KEPT.append(worker)
    worker.start()
    return worker
"""
TESTS = """
def test_one(client):
    pass


def test_two(client):
    pass


def test_three(client):
    pass


def test_socket(raw_socket):
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.mkpydir("somelib")
    (pytester.path / "somelib" / "transport.py").write_text(textwrap.dedent(TRANSPORT))
    pytester.makepyfile(test_app=TESTS)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*BASE, *args, timeout=RUN_TIMEOUT)


# -- levels --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["option", "ini"])
def test_warn_level_reports_leaks_without_failing_even_with_warnings_as_errors(
    suite: pytest.Pytester, how: str
) -> None:
    if how == "ini":
        suite.makeini(
            "[pytest]\nthread_leak_check = true\nsocket_leak_check = true\n"
            "thread_leak_level = warn\nsocket_leak_level = warn\nfilterwarnings = error\n"
        )
        result = run(suite)
    else:
        result = run(
            suite,
            "--thread-leak-check",
            "--socket-leak-check",
            "--thread-leak-level=warn",
            "--socket-leak-level=warn",
            "-W",
            "error",
        )
    result.assert_outcomes(passed=4, warnings=4)
    result.stdout.fnmatch_lines(
        [
            "*--thread-leak-level=warn*--socket-leak-level=warn*",
            "*= warnings summary =*",
            "test_app.py::test_one",
            "*NetthreadsWarning: thread leak (--thread-leak-level=warn): 'Thread-0 (io)' "
            "(threading.Event.wait, daemon), started at somelib/transport.py:* in connect, "
            "started by conftest.py:* in client",
            "test_app.py::test_socket",
            "*NetthreadsWarning: socket leak (--socket-leak-level=warn): fd=* AF_INET *"
            "created at conftest.py:* in raw_socket",
            "*= pytest-netthreads =*",
            "thread leaks: 3 (1 distinct; 3 warned)",
            "  [[]warn[]] 'Thread-* (io)' (threading.Event.wait, daemon), started at "
            "somelib/transport.py:* in connect, started by conftest.py:* in client: in 3 tests",
            "socket leaks: 1 (1 warned)",
            "  test_app.py::test_socket: [[]warn[]] fd=* created at conftest.py:* in raw_socket",
        ]
    )
    assert "ERROR" not in result.stdout.str()


def test_the_fail_level_is_the_default(suite: pytest.Pytester) -> None:
    result = run(suite, "--thread-leak-check", "--socket-leak-check")
    result.assert_outcomes(passed=4, errors=4)
    assert "NetthreadsWarning" not in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--thread-leak-check", "--thread-leak-level=loud"],
            "",
            "ERROR: --thread-leak-level must be one of warn, fail, got 'loud'",
        ),
        (
            ["--socket-leak-check"],
            "socket_leak_level = maybe\n",
            "ERROR: ini socket_leak_level (tox.ini) must be one of warn, fail, got 'maybe'",
        ),
        (
            ["--lock-order-check", "--lock-order-level="],
            "",
            "ERROR: --lock-order-level must be one of warn, fail, got ''",
        ),
    ],
)
def test_a_bad_level_is_a_usage_error_naming_the_option_and_the_values(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    pytester.makefile(".ini", tox="[pytest]\n" + ini)
    pytester.makepyfile(test_x="def test_x(): pass")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_lock_order_warn_level(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_order="""
        import threading

        def test_inverted():
            a = threading.Lock()
            b = threading.Lock()
            with a:
                with b:
                    pass
            with b:
                with a:
                    pass
        """
    )
    result = run(pytester, "--lock-order-check", "--lock-order-level=warn", "-W", "error")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*NetthreadsWarning: lock-order inversion (--lock-order-level=warn): Lock-order "
            "inversion (potential deadlock) between 2 lock classes*",
            "lock-order inversions (potential deadlocks): 1 (1 warned)",
            "  test_order.py::test_inverted: [[]warn[]] Lock-order inversion *",
        ]
    )


def test_netthreads_warning_is_exported() -> None:
    assert pytest_netthreads.NetthreadsWarning is NetthreadsWarning
    assert pytest_netthreads.plugin.NetthreadsWarning is NetthreadsWarning
    assert issubclass(NetthreadsWarning, UserWarning)


# -- baseline --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_baseline_update_then_only_new_leaks_fail_and_stale_entries_are_listed(
    suite: pytest.Pytester, workers: list[str]
) -> None:
    checks = ("--thread-leak-check", "--socket-leak-check", *workers)
    baseline = suite.path / "leaks.txt"
    result = run(suite, *checks, f"--leak-baseline={baseline}", "--leak-baseline-update")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["leak baseline written: leaks.txt (4 entries)"])
    lines = baseline.read_text().splitlines()
    assert lines[0].startswith("# pytest-netthreads leak baseline")
    entries = [line for line in lines if not line.startswith("#")]
    assert entries == [
        "socket test_app.py::test_socket | conftest.py in raw_socket",
        "thread test_app.py::test_one | Thread-* (io) | somelib/transport.py in connect",
        "thread test_app.py::test_three | Thread-* (io) | somelib/transport.py in connect",
        "thread test_app.py::test_two | Thread-* (io) | somelib/transport.py in connect",
    ]

    # test_two is fixed, a new test leaks, and the file knows a test that did not run.
    suite.makepyfile(
        test_app=TESTS.replace("def test_two(client)", "def test_two()")
        + "\n\ndef test_new(client):\n    pass\n"
    )
    with baseline.open("a") as file:
        file.write("thread test_gone.py::test_x | Thread-* | gone.py in f\n")
    result = run(suite, *checks, f"--leak-baseline={baseline}")
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_new*",
            "thread leaks: 3 (2 distinct; 2 baselined)",
            "*test_app.py::test_new: 'Thread-* (io)' *",
            "socket leaks: 1 (1 baselined)",
            "stale leak baseline entries (no leak matched them; remove them from leaks.txt): 1",
            "  thread test_app.py::test_two | Thread-* (io) | somelib/transport.py in connect",
        ]
    )
    result.stdout.no_fnmatch_line("*test_gone*")
    assert result.stdout.str().count("ERROR at teardown") == 1


def test_the_baseline_file_from_the_ini_is_relative_to_the_rootdir(
    suite: pytest.Pytester,
) -> None:
    suite.makeini("[pytest]\nthread_leak_check = true\nleak_baseline = ci/leaks.txt\n")
    (suite.path / "ci").mkdir()
    (suite.path / "ci" / "leaks.txt").write_text(
        "thread test_app.py::test_one | Thread-* (io) | elsewhere.py in f\n"
        "thread test_app.py::test_two | Renamed | somelib/transport.py in connect\n"
    )
    result = run(suite)
    # known by name (test_one) or by start site (test_two); test_three is new
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_three*", "*2 baselined*"])


@pytest.mark.parametrize(
    ("args", "content", "message"),
    [
        (
            ["--leak-baseline-update"],
            None,
            "ERROR: --leak-baseline-update (ini leak_baseline_update) needs the file: "
            "--leak-baseline=FILE (ini leak_baseline)",
        ),
        (
            ["--leak-baseline=leaks.txt"],
            "# ok\nthread only-two | fields\n",
            "ERROR: --leak-baseline / ini leak_baseline: */leaks.txt:2: not a baseline entry *",
        ),
    ],
)
def test_bad_baseline_input_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], content: str | None, message: str
) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    if content is not None:
        (pytester.path / "leaks.txt").write_text(content)
    result = run(pytester, "--thread-leak-check", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_baseline_entries_read_match_and_write(tmp_path: pathlib.Path) -> None:
    found = BaselineEntry("thread", "t.py::a", normalise_name("Thread-12 (worker)"), "x.py in f")
    assert found.name == "Thread-* (worker)"
    socket_entry = BaselineEntry("socket", "t.py::b", "", "y.py in g")
    path = str(tmp_path / "b.txt")
    Baseline([socket_entry, found, found]).write(path)
    text = pathlib.Path(path).read_text()
    assert text.splitlines()[-2:] == [
        "socket t.py::b | y.py in g",
        "thread t.py::a | Thread-* (worker) | x.py in f",
    ]
    again = Baseline.read(path)
    assert again.entries == [socket_entry, found]
    assert again.match(BaselineEntry("thread", "t.py::a", "Other", "x.py in f")) == found
    assert again.match(BaselineEntry("thread", "t.py::a", "Thread-* (worker)", "z")) == found
    assert again.match(BaselineEntry("thread", "t.py::other", "Thread-* (worker)", "x")) is None
    assert Baseline.read(str(tmp_path / "missing.txt")).entries == []
    with pytest.raises(BaselineError, match=r"b\.txt:1: not a baseline entry"):
        Baseline.parse("process t.py::a | x\n", "b.txt")
    assert short_site("/r/pkg/m.py:12 in f", "/r") == "pkg/m.py in f"
    assert short_site("/elsewhere/m.py:12 in f", "/r") == "/elsewhere/m.py in f"


# -- grouping, started by, xfail -----------------------------------------------------------


def test_identical_leaks_are_reported_in_full_once_and_grouped(suite: pytest.Pytester) -> None:
    result = run(suite, "--thread-leak-check")
    result.assert_outcomes(passed=4, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_one*",
            "started at */somelib/transport.py:* in connect",
            "started by conftest.py:* in client",
            "start stack (most recent call last):",
            "*ERROR at teardown of test_two*",
            "(stacks as in the report for test_app.py::test_one: same target and start site)",
            "thread leaks: 3 (1 distinct)",
            "  'Thread-* (io)' (threading.Event.wait, daemon), started at somelib/transport.py:* "
            "in connect, started by conftest.py:* in client: in 3 tests",
            "    test_app.py::test_one",
            "    test_app.py::test_two",
            "    test_app.py::test_three",
        ]
    )
    # Counted in the reports above the short summary: on CI (the CI variable set) pytest prints
    # each error's whole message there too, as it chooses to.
    reports = result.stdout.str().split("short test summary info")[0]
    assert reports.count("start stack (most recent call last):") == 1


def test_where_within_names_the_outermost_frame_inside_the_root(tmp_path: pathlib.Path) -> None:
    root = str(tmp_path)
    frames = (
        (str(tmp_path / "tests" / "conftest.py"), 92, "a_fixture"),
        (str(tmp_path / "somelib" / "transport.py"), 763, "connect"),
        (pytest_netthreads.__file__, 1, "kit"),
    )
    assert where_within(frames, root) == "tests/conftest.py:92 in a_fixture"
    assert where_within(frames[1:], root) == "somelib/transport.py:763 in connect"
    assert where_within(frames[2:], root) is None
    assert where_within(frames, str(tmp_path / "elsewhere")) is None


def test_a_leak_in_an_xfail_test_is_visible(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_xf="""
        import threading

        import pytest

        STOP = threading.Event()


        @pytest.mark.xfail(reason="known bug")
        def test_known_bug():
            threading.Thread(target=STOP.wait, args=(30,), name="left", daemon=True).start()
            assert False
        """
    )
    result = run(pytester, "--thread-leak-check", "-W", "error")
    # pytest counts the failed teardown as a second xfailed (the call's is the first)
    result.assert_outcomes(xfailed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*NetthreadsWarning: test_xf.py::test_known_bug: 1 leak(s) in a test marked xfail "
            "(counted as xfailed by pytest, still a leak):",
            "  'left' (threading.Event.wait, daemon), started at test_xf.py:* in test_known_bug",
            "thread leaks: 1 (1 in xfailed tests)",
            "  test_xf.py::test_known_bug (xfailed): 'left' *",
        ]
    )
    result = run(pytester, "--thread-leak-check", "-rx")
    result.stdout.fnmatch_lines(
        [
            "XFAIL test_xf.py::test_known_bug - known bug",
            "XFAIL at teardown of test_xf.py::test_known_bug - known bug [[]and 1 leak(s) at "
            "teardown: see the pytest-netthreads summary[]]",
        ]
    )


# -- library worker caches -----------------------------------------------------------------


def test_trio_worker_cache_is_no_leak_in_this_run() -> None:
    """This suite runs with --thread-leak-check: trio's idle worker would fail this test."""
    trio = pytest.importorskip("trio")
    import threading

    async def main() -> str:
        return await trio.to_thread.run_sync(lambda: threading.current_thread().name)

    assert trio.run(main) != threading.current_thread().name
    assert any(t.name.startswith("Trio thread ") for t in threading.enumerate())


TRIO_TEST = """
import trio


def test_uses_a_worker_thread():
    async def main():
        return await trio.to_thread.run_sync(lambda: 42)

    assert trio.run(main) == 42
"""


@pytest.mark.parametrize("default_ignore", [True, False])
def test_trio_worker_cache_is_in_the_default_ignore_list(
    pytester: pytest.Pytester, default_ignore: bool
) -> None:
    pytest.importorskip("trio")
    pytester.makepyfile(test_trio=TRIO_TEST)
    if not default_ignore:
        pytester.makeini("[pytest]\nthread_leak_default_ignore = false\n")
    result = run(pytester, "--thread-leak-check")
    if default_ignore:
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(
            ["--- thread 'Trio thread *' (daemon), target trio._core._thread_cache.*"]
        )
    assert [pattern for pattern, _ in IDLE_WORKER_CACHES] == [r"^Trio thread \d+$"]
