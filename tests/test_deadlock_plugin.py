"""``--deadlock-timeout`` end to end: real pytest sessions in subprocesses (they could hang).

Every inner session is bounded by ``timeout=``; the inner deadlock timeouts are long where
the test is that a cycle is found when it forms (the report says "Deadlock", not "Hang").
"""

from __future__ import annotations

import signal
import sys

import pytest

RUN_TIMEOUT = 120

ABBA = """
import threading

def test_abba():
    a = threading.Lock()
    b = threading.Lock()
    barrier = threading.Barrier(2)

    def one():
        with a:
            barrier.wait()
            with b:
                pass

    def two():
        with b:
            barrier.wait()
            with a:
                pass

    t1 = threading.Thread(target=one, name="worker-one")
    t2 = threading.Thread(target=two, name="worker-two")
    t1.start()
    t2.start()
    t1.join()
    t2.join()

def test_next_one_runs():
    pass
"""


def test_abba_between_two_threads_fails_the_test_naming_the_cycle(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_abba=ABBA)
    result = pytester.runpytest_subprocess("--deadlock-timeout=600", timeout=RUN_TIMEOUT)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*Deadlock: a wait-for cycle of 2 threads formed in test_abba.py::test_abba:",
            "*thread 'worker-*' waits for Lock created at *test_abba.py:? in test_abba",
            "*called at *test_abba.py:* in *",
            "*held by thread 'worker-*', acquired at *test_abba.py:* in *",
            "*thread 'worker-*' waits for Lock created at *test_abba.py:? in test_abba",
            "Stacks of the threads in the cycle (most recent call last):",
            "--- thread 'worker-*",
        ]
    )
    result.stdout.no_fnmatch_line("*Hang:*")
    result.stdout.no_fnmatch_line("*killing process*")


def test_three_thread_cycle(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_ring="""
        import threading

        def test_ring():
            locks = [threading.Lock() for _ in range(3)]
            barrier = threading.Barrier(3)

            def body(i):
                with locks[i]:
                    barrier.wait()
                    with locks[(i + 1) % 3]:
                        pass

            threads = [threading.Thread(target=body, args=(i,), name=f"ring-{i}")
                       for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        """
    )
    result = pytester.runpytest_subprocess("--deadlock-timeout=600", timeout=RUN_TIMEOUT)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*a wait-for cycle of 3 threads formed*"])
    for i in range(3):
        result.stdout.fnmatch_lines([f"*thread 'ring-{i}' waits for Lock created at*"])


def test_main_thread_join_on_a_deadlocked_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_join="""
        import threading

        def test_join_while_holding():
            lock = threading.Lock()
            with lock:
                worker = threading.Thread(target=lambda: lock.acquire(), name="needs-lock")
                worker.start()
                worker.join()  # the worker waits for our lock: a cycle through join

        def test_after():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--deadlock-timeout=600", timeout=RUN_TIMEOUT)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*a wait-for cycle of 2 threads*",
            "*thread 'MainThread' waits for thread 'needs-lock' to finish (Thread.join)",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*thread 'needs-lock' waits for Lock created at *", "*held by thread 'MainThread'*"]
    )


def test_condition_waits_are_no_false_report_and_a_lost_notify_is_a_hang(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_cond="""
        import queue
        import threading

        def test_producer_consumer():
            cond = threading.Condition()
            items = []
            q = queue.Queue(maxsize=2)

            def consumer():
                for _ in range(100):
                    with cond:
                        cond.wait_for(lambda: items)
                        items.pop()
                    q.put(1)

            t = threading.Thread(target=consumer)
            t.start()
            for _ in range(100):
                with cond:
                    items.append(1)
                    cond.notify()
                q.get()
            t.join()

        def test_lost_notify():
            cond = threading.Condition()

            def consumer():
                with cond:
                    cond.wait()  # nobody notifies

            t = threading.Thread(target=consumer, name="consumer", daemon=True)
            t.start()
            t.join()

        def test_after():
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "--deadlock-timeout=5", "--lock-order-check", "-p", "no:randomly", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_lost_notify _*",
            "Hang: test_cond.py::test_lost_notify hung in call: still running after 5s "
            "(--deadlock-timeout);*",
            "Wait-for state:",
            "  thread 'MainThread' waits for thread 'consumer' to finish (Thread.join)",
            "*called at *test_cond.py:* in test_lost_notify",
            "Stacks of every thread (most recent call last):",
        ]
    )
    result.stdout.fnmatch_lines(["*cond.wait()  # nobody notifies"])
    result.stdout.no_fnmatch_line("*Lock-order inversion*")


@pytest.mark.parametrize("how", ["option", "ini"])
def test_a_hang_without_cycle_fails_at_the_timeout_and_the_session_goes_on(
    pytester: pytest.Pytester, how: str
) -> None:
    pytester.makepyfile(
        test_hang="""
        import time

        def test_sleeps():
            time.sleep(600)

        def test_after():
            pass
        """
    )
    if how == "ini":
        pytester.makeini("[pytest]\ndeadlock_timeout = 1\n")
        result = pytester.runpytest_subprocess(timeout=RUN_TIMEOUT)
    else:
        result = pytester.runpytest_subprocess("--deadlock-timeout=1", timeout=RUN_TIMEOUT)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "Hang: test_hang.py::test_sleeps hung in call: still running after 1s "
            "(--deadlock-timeout);*",
            "  (no thread waits in a tracked lock or a join)",
            "--- thread 'MainThread'*",
            "*time.sleep(600)",
        ]
    )


@pytest.mark.parametrize("args", [[], ["--lock-order-check"]])
def test_the_marker_sets_the_timeout_and_turns_the_detector_on(
    pytester: pytest.Pytester, args: list[str]
) -> None:
    pytester.makepyfile(
        test_marker="""
        import threading
        import time
        import _thread
        import pytest

        @pytest.mark.deadlock_timeout(0.5)
        def test_hangs():
            assert type(threading.Lock()) is not _thread.LockType  # tracking is on
            time.sleep(600)

        @pytest.mark.deadlock_timeout(seconds=0)
        def test_zero_means_cycles_only():
            time.sleep(0.01)
        """
    )
    result = pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        ["Hang: test_marker.py::test_hangs hung in call: still running after 0.5s*"]
    )


def test_off_means_untouched_threading(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_off="""
        import threading
        import _thread

        def test_plain():
            # a function before Python 3.13, the lock type since
            assert threading.Lock in (_thread.allocate_lock, _thread.LockType)
            assert type(threading.Lock()) is _thread.LockType
            assert not any(t.name == "netthreads-watchdog" for t in threading.enumerate())
        """
    )
    result = pytester.runpytest_subprocess(timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)


def test_one_internal_watchdog_thread_for_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_watchdog="""
        import threading
        import pytest
        from pytest_netthreads._runtime.threads import is_internal

        @pytest.mark.parametrize("i", range(3))
        def test_one_watchdog(i):
            dogs = [t for t in threading.enumerate() if t.name == "netthreads-watchdog"]
            assert len(dogs) == 1 and is_internal(dogs[0])
        """
    )
    result = pytester.runpytest_subprocess(
        "--deadlock-timeout=30", "--thread-leak-check", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=3)


_SECONDS = "must be a finite number of seconds >= 0 and <= 9.22337e+09"
_SIGNATURE = "seconds=None, [*], setup=None, call=None, teardown=None"


@pytest.mark.parametrize(
    ("args", "marker", "message"),
    [
        (["--deadlock-timeout=soon"], "", f"ERROR: --deadlock-timeout {_SECONDS}, got 'soon'"),
        (["--deadlock-timeout=-1"], "", f"ERROR: --deadlock-timeout {_SECONDS}, got '-1'"),
        (["--deadlock-timeout="], "", f"ERROR: --deadlock-timeout {_SECONDS}, got ''"),
        ([], "@pytest.mark.deadlock_timeout('x')", "*deadlock_timeout('x'): seconds must*"),
        ([], "@pytest.mark.deadlock_timeout(1, 2)", f"*deadlock_timeout({_SIGNATURE}) takes*"),
    ],
)
def test_bad_values_are_named(
    pytester: pytest.Pytester, args: list[str], marker: str, message: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        {marker}
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)
    assert result.ret != 0
    (result.stderr if not marker else result.stdout).fnmatch_lines([message])


def test_works_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_abba=ABBA,
        test_hang="""
        import time

        def test_sleeps():
            time.sleep(600)

        def test_fine():
            pass
        """,
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "--deadlock-timeout=2", "-p", "no:cacheprovider", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines_random(
        ["*Deadlock: a wait-for cycle of 2 threads*", "*Hang: test_hang.py::test_sleeps*"]
    )
    result.stdout.no_fnmatch_line("*replacing crashed worker*")


def test_plugins_can_take_reports_over(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl
        def pytest_netthreads_deadlock_report(config, item, report):
            with open("reports.txt", "a") as f:
                f.write(f"{item.name} {report.kind} {sorted(report.threads)}\\n")
            return True
        """
    )
    pytester.makepyfile(test_abba=ABBA)
    result = pytester.runpytest_subprocess("--deadlock-timeout=600", timeout=RUN_TIMEOUT)
    # The test still fails (it was interrupted), but not with the plugin's own report.
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*DeadlockError*"])
    taken = (pytester.path / "reports.txt").read_text()
    assert taken == "test_abba cycle ['worker-one', 'worker-two']\n"


def test_the_process_is_killed_as_the_last_resort(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_stubborn="""
        import time

        def test_swallows_every_interrupt():
            while True:
                try:
                    time.sleep(600)
                except BaseException:
                    pass
        """
    )
    result = pytester.runpytest_subprocess("--deadlock-timeout=0.5", timeout=RUN_TIMEOUT)
    assert result.ret == 70
    result.stderr.fnmatch_lines(
        [
            "pytest-netthreads: test_stubborn.py::test_swallows_every_interrupt did not stop "
            "within 5s after it was interrupted; killing process * as the last resort.*",
        ]
    )


GIL_HELD = """
import re

import signal
import sys

import pytest

@pytest.mark.parametrize("case", ["catastrophic"])
def test_stuck_in_c(case):
    # Backtracking over 2**40 paths in C, holding the GIL: no Python thread runs meanwhile,
    # the hang watchdog neither.
    re.match(r"(a+)+$", "a" * 40 + "b")
"""


@pytest.mark.parametrize(
    ("ini", "args"),
    [
        ("", ()),
        ("[pytest]\nfaulthandler_timeout = 0.5\n", ()),
        ("", ("-p", "no:faulthandler")),  # faulthandler off: no C stack on 3.14 either
    ],
)
def test_a_test_holding_the_gil_is_ended_by_the_process_watchdog(
    pytester: pytest.Pytester, ini: str, args: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_gil=GIL_HELD)
    if ini:
        pytester.makeini(ini)
    result = pytester.runpytest_subprocess("--deadlock-timeout=1", *args, timeout=RUN_TIMEOUT)
    # On 3.14+, with faulthandler enabled for fatal signals (pytest's default), the process
    # is ended with SIGABRT so that faulthandler adds the C stack of the stuck main thread.
    c_stack = sys.version_info >= (3, 14) and not args
    name = "SIGABRT" if c_stack else "SIGUSR2"
    assert result.ret == -(signal.SIGABRT if c_stack else signal.SIGUSR2)
    result.stderr.fnmatch_lines(
        [
            "pytest-netthreads: test_gil.py::test_stuck_in_c[[]catastrophic[]] is still running "
            "*s past the last-resort deadline and process * does not respond (C code holding "
            f"the GIL?); the watchdog process ends it with {name}. Stacks of every thread "
            "(most recent call first)"
            + (", then the C stack of its main thread:" if c_stack else ":"),
            "*Thread 0x* (most recent call first):",
            "*File *deadlock.py*, line * in _run",
        ]
    )
    result.stderr.fnmatch_lines(
        ["Current thread 0x* (most recent call first):", '*File "*test_gil.py", line * in test_*']
    )
    if c_stack:
        result.stderr.fnmatch_lines(["Current thread's C stack trace (most recent call first):"])
    else:
        result.stderr.no_fnmatch_line("*C stack trace*")
    result.stdout.no_fnmatch_line("*Hang:*")  # the Python watchdog never ran
    if ini:  # pytest's faulthandler_timeout still dumps (its timer is left alone)
        result.stderr.fnmatch_lines(["Timeout (0:00:00.5*)!"])


DEBUGGED = """
import signal
import sys

import pytest

@pytest.mark.deadlock_timeout(0.2)
def test_debugged():
    {body}
"""

# pdb commands: stay in the debugger until well past the deadline, then go on.
PDB_INPUT = b"""!import time; end = time.monotonic() + 3
!while time.monotonic() < end: time.sleep(0.05)
p "stayed past the deadline"
c
"""


@pytest.mark.parametrize(
    ("body", "args", "outcome"),
    [("breakpoint()", [], "1 passed"), ("assert False", ["--pdb"], "1 failed")],
)
def test_the_deadline_is_off_while_a_debugger_runs(
    pytester: pytest.Pytester, body: str, args: list[str], outcome: str
) -> None:
    pytester.makepyfile(test_debugged=DEBUGGED.format(body=body))
    result = pytester.run(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        *args,
        stdin=PDB_INPUT,
        timeout=RUN_TIMEOUT,
    )
    result.stdout.fnmatch_lines(["*'stayed past the deadline'*", f"*{outcome}*"])
    result.stdout.no_fnmatch_line("*Hang*")  # no HangError in the debugger, no report
    result.stdout.no_fnmatch_line("*ERROR at *")


def test_a_bad_marker_is_one_clear_error_and_the_hang_names_the_marker(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_marker="""
        import time
        import pytest

        @pytest.mark.deadlock_timeout(float("nan"))
        def test_nan():
            pass

        @pytest.mark.deadlock_timeout(seconds=True)
        def test_bool(caplog):
            pass

        @pytest.mark.deadlock_timeout(seconds=0.5)
        def test_hangs():
            time.sleep(600)

        def test_option_deadline():
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "--deadlock-timeout=300", "-p", "no:randomly", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(errors=2, failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_nan _*",
            f"ValueError: @pytest.mark.deadlock_timeout(nan): seconds {_SECONDS}, got nan",
            "*_ ERROR at setup of test_bool _*",
            f"TypeError: @pytest.mark.deadlock_timeout(seconds=True): seconds {_SECONDS}, "
            "got True",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "Hang: test_marker.py::test_hangs hung in call: still running after 0.5s "
            "(@pytest.mark.deadlock_timeout(seconds=0.5)); no wait-for cycle*",
        ]
    )
    result.stdout.no_fnmatch_line("*KeyError*")
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5", "1e10", "1e400", "0x10", ""])
def test_bad_deadlock_timeout_values_are_usage_errors(
    pytester: pytest.Pytester, value: str
) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    if value == "":  # the ini key, blank: off
        pytester.makeini("[pytest]\ndeadlock_timeout =\n")
        result = pytester.runpytest_subprocess(timeout=RUN_TIMEOUT)
        result.assert_outcomes(passed=1)
        return
    result = pytester.runpytest_subprocess(f"--deadlock-timeout={value}", timeout=RUN_TIMEOUT)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --deadlock-timeout {_SECONDS}, got {value!r}"
        ]
    )


# -- a deadline per phase ------------------------------------------------------------------

PHASE_HANGS = """
import time
import pytest

@pytest.fixture
def slow_setup():
    time.sleep(600)

@pytest.fixture
def slow_teardown():
    yield
    time.sleep(600)

def test_setup_hangs(slow_setup):
    pass

def test_teardown_hangs(slow_teardown):
    pass

def test_teardown_hangs_after_a_failed_call(slow_teardown):
    assert False, "the call failed"

def test_after():
    pass
"""


@pytest.mark.parametrize("how", ["option", "ini"])
def test_a_hang_in_setup_or_teardown_names_its_phase_even_after_a_failed_call(
    pytester: pytest.Pytester, how: str
) -> None:
    pytester.makepyfile(test_phases=PHASE_HANGS)
    if how == "ini":
        pytester.makeini(
            "[pytest]\ndeadlock_timeout = 300\ndeadlock_timeout_setup = 0.5\n"
            "deadlock_timeout_teardown = 0.5\n"
        )
        args: list[str] = []
        setup_source, teardown_source = "--deadlock-timeout-setup", "--deadlock-timeout-teardown"
    else:
        args = ["--deadlock-timeout=0.5"]
        setup_source = teardown_source = "--deadlock-timeout"
    result = pytester.runpytest_subprocess(*args, "-p", "no:randomly", timeout=RUN_TIMEOUT)
    # setup error; teardown error (+ pass); failed call + teardown error; pass
    result.assert_outcomes(errors=3, failed=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_setup_hangs _*",
            "Hang: test_phases.py::test_setup_hangs hung in setup: still running after 0.5s "
            f"({setup_source}); no wait-for cycle among tracked locks and joins.",
            "*_ ERROR at teardown of test_teardown_hangs _*",
            "Hang: test_phases.py::test_teardown_hangs hung in teardown: still running after "
            f"0.5s ({teardown_source}); no wait-for cycle*",
            "*_ ERROR at teardown of test_teardown_hangs_after_a_failed_call _*",
            "Hang: test_phases.py::test_teardown_hangs_after_a_failed_call hung in teardown: "
            f"still running after 0.5s ({teardown_source}); no wait-for cycle*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*_ test_teardown_hangs_after_a_failed_call _*", "*AssertionError: the call failed"]
    )
    result.stdout.fnmatch_lines(
        [
            "hangs (still running at the deadline): 3",
            "  test_phases.py::test_setup_hangs: Hang in setup: still running after 0.5s*",
        ]
    )
    result.stdout.no_fnmatch_line("*killing process*")


@pytest.mark.parametrize(
    ("args", "call_source", "teardown_source"),
    [
        (["--deadlock-timeout=0.5"], "--deadlock-timeout", "--deadlock-timeout"),
        (
            [
                "--deadlock-timeout=300",
                "--deadlock-timeout-call=0.5",
                "--deadlock-timeout-teardown=0.5",
            ],
            "--deadlock-timeout-call",
            "--deadlock-timeout-teardown",
        ),
    ],
)
def test_a_teardown_hang_after_a_hung_call_is_timed_again(
    pytester: pytest.Pytester, args: list[str], call_source: str, teardown_source: str
) -> None:
    pytester.makepyfile(
        test_both="""
        import time
        import pytest

        @pytest.fixture
        def slow_teardown():
            yield
            time.sleep(600)

        def test_both_hang(slow_teardown):
            time.sleep(600)
        """
    )
    result = pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "Hang: test_both.py::test_both_hang hung in teardown: still running after 0.5s "
            f"({teardown_source});*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "Hang: test_both.py::test_both_hang hung in call: still running after 0.5s "
            f"({call_source});*",
        ]
    )
    result.stdout.no_fnmatch_line("*killing process*")


def test_marker_keywords_set_each_phase(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marker="""
        import time
        import pytest

        @pytest.fixture
        def slow_setup():
            time.sleep(1)

        @pytest.fixture
        def slow_teardown():
            yield
            time.sleep(600)

        # The call's own deadline is short; the setup (1s) has the option's 300s.
        @pytest.mark.deadlock_timeout(call=0.5)
        def test_call_deadline(slow_setup):
            time.sleep(600)

        @pytest.mark.deadlock_timeout(300, teardown=0.5)
        def test_teardown_deadline(slow_teardown):
            pass

        # A phase at 0 has no deadline (the setup takes 1s of a 0.5s default).
        @pytest.mark.deadlock_timeout(0.5, setup=0, call=0)
        def test_no_setup_deadline(slow_setup):
            time.sleep(1)
        """
    )
    result = pytester.runpytest_subprocess(
        "--deadlock-timeout=300", "-p", "no:randomly", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(failed=1, errors=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "Hang: test_marker.py::test_call_deadline hung in call: still running after 0.5s "
            "(@pytest.mark.deadlock_timeout(call=0.5)); no wait-for cycle*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_teardown_deadline _*",
            "Hang: test_marker.py::test_teardown_deadline hung in teardown: still running "
            "after 0.5s (@pytest.mark.deadlock_timeout(300, teardown=0.5)); no wait-for cycle*",
        ]
    )
    result.stdout.no_fnmatch_line("*test_no_setup_deadline hung*")


def test_a_phase_option_alone_turns_the_detector_on_for_that_phase(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_alone="""
        import time
        import pytest

        @pytest.fixture
        def slow_setup():
            time.sleep(1)

        def test_only_teardown_is_timed(slow_setup):
            time.sleep(1)
        """
    )
    result = pytester.runpytest_subprocess("--deadlock-timeout-teardown=0.5", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["pytest-netthreads: --deadlock-timeout=0, --deadlock-timeout-teardown=0.5*"]
    )


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--deadlock-timeout-call=soon"], "", f"ERROR: --deadlock-timeout-call {_SECONDS}*"),
        (["--deadlock-timeout-setup=nan"], "", f"ERROR: --deadlock-timeout-setup {_SECONDS}*"),
        (["--deadlock-timeout-teardown=-1"], "", f"ERROR: --deadlock-timeout-teardown {_SECONDS}*"),
        ([], "deadlock_timeout_teardown = inf", "ERROR: ini deadlock_timeout_teardown (tox.ini) *"),
    ],
)
def test_bad_phase_values_are_usage_errors_naming_the_option(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    if ini:
        pytester.makefile(".ini", tox=f"[pytest]\n{ini}\n")
    result = pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("call=float('nan')", f"ValueError: *(call=nan): call {_SECONDS}, got nan"),
        ("teardown='1'", f"TypeError: *(teardown='1'): teardown {_SECONDS}, got '1'"),
        ("setup=-1", f"ValueError: *(setup=-1): setup {_SECONDS}, got -1"),
        ("1, seconds=2", f"TypeError: *(1, seconds=2): deadlock_timeout({_SIGNATURE}) takes *"),
        ("cal=1", "TypeError: @pytest.mark.deadlock_timeout(cal=1): deadlock_timeout(*) takes *"),
        ("", "TypeError: @pytest.mark.deadlock_timeout(): deadlock_timeout(*) takes *"),
    ],
)
def test_bad_marker_keywords_are_one_error_naming_the_keyword(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.deadlock_timeout({marker})
        def test_x():
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--deadlock-timeout=300", timeout=RUN_TIMEOUT)
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines(["*_ ERROR at setup of test_x _*", message])
