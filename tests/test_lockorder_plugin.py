"""``--lock-order-check`` end to end, in subprocess sessions (bounded)."""

from __future__ import annotations

import pytest

RUN_TIMEOUT = 120

INVERSION = """
import threading

FIRST = threading.Lock()
SECOND = threading.RLock()

def take(outer, inner):
    with outer:
        with inner:
            pass

def test_forward():
    t = threading.Thread(target=take, args=(FIRST, SECOND), name="forward-thread")
    t.start()
    t.join()

def test_backward():
    take(SECOND, FIRST)  # the other order, later: no deadlock in this run

def test_after():
    take(FIRST, SECOND)
"""


@pytest.mark.parametrize("how", ["option", "ini"])
def test_an_inversion_fails_the_test_that_closes_the_cycle(
    pytester: pytest.Pytester, how: str
) -> None:
    pytester.makepyfile(test_order=INVERSION)
    args = ["-p", "no:randomly"]
    if how == "option":
        args.append("--lock-order-check")
    else:
        pytester.makeini("[pytest]\nlock_order_check = true\n")
    result = pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_backward _*",
            "Lock-order inversion (potential deadlock) between 2 lock classes:*",
            "order 1:",
            "  thread 'MainThread' acquired",
            "    Lock created at *test_order.py:3 in <module>",
            "      at *test_order.py:8 in take",
            "    while holding RLock created at *test_order.py:4 in <module>",
            "      acquired at *test_order.py:7 in take",
            "    stack at the second acquisition:",
            "*test_order.py*, line 17, in test_backward",
            "*take(SECOND, FIRST)*",
            "*test_order.py*, line 8, in take",
            "order 2:",
            "  thread 'forward-thread' acquired",
            "    RLock created at *test_order.py:4 in <module>",
            "      at *test_order.py:8 in take",
            "    while holding Lock created at *test_order.py:3 in <module>",
            "      acquired at *test_order.py:7 in take",
        ]
    )


def test_stdlib_and_kit_usage_is_clean(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_clean="""
        import concurrent.futures
        import logging
        import queue
        import socket
        import threading

        LOCK = threading.Lock()

        def test_executor_queue_logging(echo_server):
            q = queue.Queue()
            log = logging.getLogger("clean")

            def work(i):
                with LOCK:
                    q.put(i)
                    log.warning("work %d", i)
                return q.get()

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                assert sorted(pool.map(work, range(50))) == list(range(50))
            with LOCK, socket.create_connection(echo_server.address, timeout=10) as s:
                s.sendall(b"x")
                assert s.recv(1) == b"x"
        """
    )
    result = pytester.runpytest_subprocess(
        "--lock-order-check", "--deadlock-timeout=60", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=1)


def test_plugins_can_take_lock_order_reports_over(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl
        def pytest_netthreads_lock_order_report(config, item, report):
            with open("orders.txt", "a") as f:
                f.write(f"{item.name} {len(report.edges)}\\n")
            return True
        """
    )
    pytester.makepyfile(test_order=INVERSION)
    result = pytester.runpytest_subprocess(
        "--lock-order-check", "-p", "no:randomly", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=3)
    assert (pytester.path / "orders.txt").read_text() == "test_backward 2\n"


FORK = r'''
import _thread
import os
import signal
import threading
import time

import pytest

from pytest_netthreads.detect import locks

FORK_WARNING = (
    "ignore:This process .* is multi-threaded, use of fork\\(\\) may lead to deadlocks"
    ":DeprecationWarning"
)


def wait_for_child(pid, timeout=60.0):
    """The child's exit status, or kill it (by its pid) and fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)  # no event for another process's exit: a bounded poll
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child {pid} hung")


def in_child():
    """Start a thread, take locks (new and old, blocking and timed); the exit status says."""
    done = []
    thread = threading.Thread(target=lambda: done.append(1))
    thread.start()
    thread.join(10)
    fresh = threading.Lock()
    with fresh:
        with threading.RLock():
            pass
    event = threading.Event()
    threading.Thread(target=event.set).start()
    assert event.wait(10)
    return 0 if done else 1


@pytest.mark.filterwarnings(FORK_WARNING)
def test_fork_while_another_thread_holds_locks(request):
    plugin = request.config.pluginmanager.get_plugin("netthreads-deadlock")
    internal = [locks._graph_lock]  # held at the fork by another thread
    if plugin.checker is not None:
        internal.append(plugin.checker._lock)  # recording an edge, say
    if plugin.detector is not None:
        internal.append(plugin.detector._state_lock)
    user_lock = threading.Lock()
    ready = _thread.allocate_lock()  # plain locks: the handshake stays out of the tracker
    ready.acquire()
    go = _thread.allocate_lock()
    go.acquire()

    def holder():
        with user_lock:
            for lock in internal:
                lock.acquire()
            ready.release()
            go.acquire(timeout=60)
            for lock in reversed(internal):
                lock.release()

    thread = threading.Thread(target=holder, name="holder")
    thread.start()
    try:
        assert ready.acquire(timeout=60)
        pid = os.fork()
        if pid == 0:
            status = 2
            try:
                status = in_child()
                # The user lock stays held (as a plain lock would): a timed wait times out.
                if user_lock.acquire(timeout=0.1):
                    status = 3
            finally:
                os._exit(status)
    finally:
        go.release()
        thread.join(60)
    assert wait_for_child(pid) == 0
    assert in_child() == 0  # the parent is fine too
'''


@pytest.mark.parametrize(
    "args",
    [
        ["--lock-order-check"],
        ["--deadlock-timeout=120"],
        ["--lock-order-check", "--deadlock-timeout=0"],
    ],
)
def test_a_forked_child_can_start_threads_and_take_locks(
    pytester: pytest.Pytester, args: list[str]
) -> None:
    pytester.makepyfile(test_fork=FORK)
    result = pytester.runpytest_subprocess(*args, "-W", "error", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)


GC_FINALIZER = """
import gc
import threading

import pytest


class Connection:
    '''Closed by its finalizer, under its pool's lock; kept in a cycle, so only the cyclic
    garbage collector frees it.'''

    def __init__(self, pool_lock):
        self.pool_lock = pool_lock
        self.me = self

    def __del__(self):
        with self.pool_lock:
            pass


@pytest.fixture
def no_automatic_gc():
    gc.disable()  # the collection happens where the test says, not at a random allocation
    yield
    gc.enable()


def test_finalizer_run_by_gc_under_a_lock_is_no_order(no_automatic_gc):
    registry_lock = threading.Lock()
    pool_lock = threading.Lock()
    Connection(pool_lock)
    with registry_lock:
        assert gc.collect() > 0  # runs Connection.__del__: pool_lock under registry_lock
    with pool_lock:  # the program's real order
        with registry_lock:
            pass


def test_the_same_acquisition_outside_gc_is_an_order(no_automatic_gc):
    registry_lock = threading.Lock()
    pool_lock = threading.Lock()
    conn = Connection(pool_lock)
    with registry_lock:
        conn.__del__()  # the same code, called by the program itself
    with pool_lock:
        with registry_lock:
            pass
    conn.me = None
"""


def test_locks_taken_by_finalizers_during_garbage_collection_form_no_edges(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_gc=GC_FINALIZER)
    result = pytester.runpytest_subprocess(
        "--lock-order-check", "-p", "no:randomly", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_the_same_acquisition_outside_gc_is_an_order _*",
            "Lock-order inversion (potential deadlock) between 2 lock classes:*",
            "  thread 'MainThread' acquired",
            "    Lock created at *test_gc.py:* in test_the_same_acquisition_outside_gc_is_an_order",
            "      at *test_gc.py:* in __del__",
        ]
    )
    result.stdout.no_fnmatch_line("*_ test_finalizer_run_by_gc_under_a_lock_is_no_order _*")
