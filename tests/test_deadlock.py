"""DeadlockDetector without pytest wiring: cycles found when they form, hangs at the deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pytest_netthreads._runtime.threads import is_internal
from pytest_netthreads.detect import locks
from pytest_netthreads.detect.deadlock import (
    DeadlockDetector,
    DeadlockError,
    DeadlockReport,
    HangError,
    find_cycles,
)
from pytest_netthreads.detect.lastresort import ProcessWatchdog


@pytest.fixture
def detector() -> Iterator[DeadlockDetector]:
    reports: list[DeadlockReport] = []
    with DeadlockDetector(on_report=reports.append) as det:
        assert (
            sum(t.name == "netthreads-watchdog" and is_internal(t) for t in threading.enumerate())
            == 1
        )
        det.arm("in-process", timeout=None)
        yield det
        det.disarm()
    assert not any(t.name == "netthreads-watchdog" for t in threading.enumerate())


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def run_threads(
    *targets: Callable[[], None], names: list[str], into: list[threading.Thread] | None = None
) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, name=n) for t, n in zip(targets, names)]
    if into is not None:
        into.extend(threads)  # before start(): the detector may interrupt start() itself
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)


def start_ring(n: int, threads: list[threading.Thread], errors: list[BaseException]) -> None:
    """n threads, thread i holds lock i and then wants lock i+1 (mod n)."""
    lks = [threading.Lock() for _ in range(n)]
    barrier = threading.Barrier(n, timeout=10)

    def make(i: int) -> Callable[[], None]:
        def body() -> None:
            try:
                with lks[i]:
                    barrier.wait()
                    with lks[(i + 1) % n]:
                        pass
            except DeadlockError as exc:
                errors.append(exc)

        return body

    names = [f"ring-{i}" for i in range(n)]
    run_threads(*(make(i) for i in range(n)), names=names, into=threads)


@pytest.mark.usefixtures("detector")
@pytest.mark.parametrize("n", [2, 3])
def test_a_cycle_is_found_when_it_forms_and_broken(n: int) -> None:
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    # The armed thread (this one) is interrupted wherever it is: starting or joining.
    with pytest.raises(DeadlockError) as info:
        start_ring(n, threads, errors)
        for thread in threads:
            thread.join()
    join_all(threads)
    assert len(errors) >= 1  # at least one waiter was aborted; the others then got the lock
    report = info.value.report
    assert report.kind == "cycle"
    assert sorted(report.threads) == [f"ring-{i}" for i in range(n)]
    assert f"a wait-for cycle of {n} threads" in report.text
    assert report.text.count(f"created at {__file__}") == n
    assert report.text.count(f"acquired at {__file__}") == n
    assert "with lks[(i + 1) % n]:" in report.text  # each thread's stack


def test_main_thread_waiting_in_the_cycle_gets_the_error(detector: DeadlockDetector) -> None:
    first, second = threading.Lock(), threading.Lock()
    held = threading.Event()

    def worker() -> None:
        with second:
            held.set()
            with first:
                pass

    with first:
        (thread,) = run_threads(worker, names=["worker"])
        assert held.wait(10)
        with pytest.raises(DeadlockError) as info:
            second.acquire()
    join_all([thread])
    assert info.value.report.threads in (("MainThread", "worker"), ("worker", "MainThread"))


def test_a_condition_reacquire_can_be_part_of_a_cycle(detector: DeadlockDetector) -> None:
    lock = threading.Lock()
    cond = threading.Condition()
    waiting = threading.Event()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            with lock, cond:
                waiting.set()
                cond.wait(30)  # notified, it needs `cond` back while holding `lock`
        except DeadlockError as exc:
            errors.append(exc)

    def notifier() -> None:
        try:
            with cond:
                cond.notify()
                with lock:
                    pass
        except DeadlockError as exc:
            errors.append(exc)

    (t1,) = run_threads(waiter, names=["waiter"])
    assert waiting.wait(10)
    started: list[threading.Thread] = []
    # The armed (test) thread is interrupted too: in join, or already in start() when the
    # cycle forms that fast.
    with pytest.raises(DeadlockError):
        run_threads(notifier, names=["notifier"], into=started)
        join_all([t1, *started])
    join_all([t1, *started])
    # The notifier was aborted (the waiter's re-acquire in Condition.wait is not abortable:
    # its caller's `with` would release a lock it lacks) and the waiter then went on.
    assert [str(e) for e in errors] == [
        "aborted: this thread was in a wait-for cycle with 'waiter', 'notifier'"
    ] or [str(e) for e in errors] == [
        "aborted: this thread was in a wait-for cycle with 'notifier', 'waiter'"
    ]
    assert detector.has_reports()
    reports = detector.take_reports()
    assert not detector.has_reports()
    assert len(reports) == 1
    text = reports[0].text
    assert f"RLock created at {__file__}" in text  # the condition's own lock, at the user's line
    assert "through Condition.__init__" in text
    # acquisition and call sites are the user's lines, not Condition's internals
    assert text.count(f"acquired at {__file__}") == 2
    assert text.count(f"called at {__file__}") == 2
    assert sorted(reports[0].threads) == ["notifier", "waiter"]


def test_condition_and_queue_traffic_is_no_deadlock(detector: DeadlockDetector) -> None:
    import queue

    q: queue.Queue[int | None] = queue.Queue(maxsize=1)
    cond = threading.Condition()
    seen: list[int] = []

    def consumer() -> None:
        while (item := q.get(timeout=10)) is not None:
            with cond:
                seen.append(item)
                cond.notify_all()

    threads = run_threads(consumer, consumer, names=["c1", "c2"])
    for i in range(200):
        q.put(i, timeout=10)
    with cond:
        assert cond.wait_for(lambda: len(seen) == 200, timeout=10)
    q.put(None)
    q.put(None)
    join_all(threads)
    assert not detector.has_reports()
    assert detector.take_reports() == []


def test_a_thread_waiting_on_a_plain_lock_it_holds_is_not_a_deadlock(
    detector: DeadlockDetector,
) -> None:
    # The Condition.wait pattern: acquire twice, another thread releases.
    signal_lock = threading.Lock()

    def waits_for_signal() -> None:
        signal_lock.acquire()
        signal_lock.acquire()
        signal_lock.release()

    (thread,) = run_threads(waits_for_signal, names=["signalled"])
    wait_until(lambda: thread.ident in locks.waits())
    assert find_cycles(locks.waits()) == []
    signal_lock.release()
    join_all([thread])
    assert detector.take_reports() == []


def test_a_hang_without_cycle_interrupts_the_main_thread(detector: DeadlockDetector) -> None:
    never = threading.Event()
    gate = threading.Lock()
    gate.acquire()
    (blocked,) = run_threads(lambda: gate.acquire() and None, names=["stuck-on-gate"])
    wait_until(lambda: blocked.ident in locks.waits())
    detector.arm("hang-test", timeout=0.3)
    with pytest.raises(HangError) as info:
        never.wait(60)  # untracked waiter lock: the signal interrupts it
    report = info.value.report
    assert report.kind == "timeout"
    assert "hang-test still running after 0.3s" in report.text
    assert "thread 'stuck-on-gate' waits for Lock created at" in report.text
    assert "held by thread 'MainThread'" in report.text
    assert "never.wait(60)" in report.text
    gate.release()
    join_all([blocked])


def test_a_hang_in_a_join_is_interrupted_too(detector: DeadlockDetector) -> None:
    release = threading.Event()
    (worker,) = run_threads(lambda: release.wait(60) and None, names=["sleeper"])
    detector.arm("join-hang", timeout=0.3)
    with pytest.raises(HangError, match="join-hang"):
        worker.join()
    assert worker.is_alive()  # the interrupted join did not corrupt the thread's state
    release.set()
    join_all([worker])


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="tick"):
        DeadlockDetector(tick=0)
    with pytest.raises(ValueError, match="kill_grace"):
        DeadlockDetector(kill_grace=-1)
    with DeadlockDetector() as det, pytest.raises(ValueError, match="timeout"):
        det.arm("x", timeout=-1)
    det = DeadlockDetector().start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            det.start()
    finally:
        det.stop()


NAN = float("nan")
INF = float("inf")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: DeadlockDetector(tick=NAN), ValueError, "tick must be a finite"),
        (lambda: DeadlockDetector(tick=INF), ValueError, "tick must be a finite"),
        (lambda: DeadlockDetector(tick=True), TypeError, "tick must be a finite number"),
        (lambda: DeadlockDetector(tick="0.1"), TypeError, "tick must be a finite number"),
        (lambda: DeadlockDetector(kill_grace=NAN), ValueError, "kill_grace must be a finite"),
        (lambda: DeadlockDetector(kill_grace=1e10), ValueError, "kill_grace must be a finite"),
        (lambda: DeadlockDetector(interrupt_signal=0), ValueError, "interrupt_signal must"),
        (lambda: DeadlockDetector(interrupt_signal=9), ValueError, "interrupt_signal must"),
        (lambda: DeadlockDetector(interrupt_signal=True), TypeError, "interrupt_signal must"),
        (lambda: DeadlockDetector(on_report=1), TypeError, "on_report must be callable"),
        (lambda: DeadlockDetector(before_kill="x"), TypeError, "before_kill must be callable"),
        (lambda: DeadlockDetector(process_watchdog=1), TypeError, "process_watchdog must be"),
        (lambda: DeadlockDetector(stderr_fd=-1), ValueError, "stderr_fd must be"),
        (lambda: DeadlockDetector(stderr_fd=2.0), TypeError, "stderr_fd must be"),
        (lambda: DeadlockDetector().arm("x", NAN), ValueError, "timeout must be a finite"),
        (lambda: DeadlockDetector().arm("x", INF), ValueError, "timeout must be a finite"),
        (lambda: DeadlockDetector().arm("x", -0.5), ValueError, "timeout must be a finite"),
        (lambda: DeadlockDetector().arm("x", 1e10), ValueError, "timeout must be a finite"),
        (lambda: DeadlockDetector().arm("x", True), TypeError, "timeout must be a finite"),
        (lambda: DeadlockDetector().arm("x", "5"), TypeError, "timeout must be a finite"),
        (lambda: DeadlockDetector().arm(1, 5), TypeError, "label must be"),
        (lambda: DeadlockDetector().arm("x", 5, True), TypeError, "ident must be"),
        (lambda: DeadlockDetector().arm("x", 5, source=1), TypeError, "source must be"),
        (lambda: DeadlockDetector().stop(NAN), ValueError, "timeout must be a finite"),
        (
            lambda: DeadlockReport("cycle", "", ()).join_threads(INF),
            ValueError,
            "timeout must be a finite",
        ),
        (lambda: ProcessWatchdog(grace=0), ValueError, "grace must be a finite"),
        (lambda: ProcessWatchdog(signum=signal.SIGKILL), ValueError, "signum must"),
        (lambda: ProcessWatchdog().arm("x", NAN), ValueError, "seconds must be a finite"),
        (lambda: ProcessWatchdog().arm("x", 0), ValueError, "seconds must be a finite"),
        (lambda: ProcessWatchdog().arm(b"x", 1), TypeError, "label must be"),
    ],
)
def test_arguments_are_checked_at_the_call(
    call: Callable[[], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call()
    assert not locks.installed()


DISARMED = """
import sys, time
from pytest_netthreads.detect.lastresort import ProcessWatchdog

watchdog = ProcessWatchdog(grace=1.0)
watchdog.arm("short", 0.2)
watchdog.arm("re-armed", 0.3)
watchdog.disarm()
end = time.monotonic() + 2.0  # well past both deadlines: nothing may fire
while time.monotonic() < end:
    time.sleep(0.05)
assert watchdog.running
watchdog.stop()
assert not watchdog.running
print("alive")
"""


def test_a_disarmed_process_watchdog_never_fires() -> None:
    done = subprocess.run(
        [sys.executable, "-c", DISARMED], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "alive\n", "")


@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork\\(\\) may lead to deadlocks"
    ":DeprecationWarning"
)
def test_a_forked_child_gets_its_own_watchdog_thread() -> None:
    with DeadlockDetector() as detector:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                detector.arm("in the child", timeout=0.3)
                time.sleep(60)
            except HangError as exc:
                status = 0 if "in the child still running after 0.3s" in str(exc) else 2
            finally:
                os._exit(status)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)  # no event for another process's exit: a bounded poll
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child was not interrupted")
        assert os.waitstatus_to_exitcode(status) == 0
        assert not detector.armed  # the parent's state is its own
