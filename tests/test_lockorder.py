"""LockOrderChecker without pytest wiring: inversions found in runs that did not deadlock."""

from __future__ import annotations

import concurrent.futures
import io
import logging
import queue
import threading
from collections.abc import Callable, Iterator

import pytest

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads.detect.lockorder import LockOrderChecker, LockOrderReport


@pytest.fixture
def checker() -> Iterator[LockOrderChecker]:
    with LockOrderChecker() as chk:
        yield chk


def in_thread(target: Callable[[], None], name: str) -> None:
    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()


def test_an_inversion_is_reported_with_both_orders(checker: LockOrderChecker) -> None:
    seen: list[LockOrderReport] = []
    first = threading.Lock()
    second = threading.RLock()

    def forward() -> None:
        with first, second:
            pass

    def backward() -> None:
        with second, first:
            pass

    in_thread(forward, "forward")
    assert checker.take_reports() == []
    in_thread(backward, "backward")  # one after the other: no deadlock happened
    seen = checker.take_reports()
    assert len(seen) == 1
    report = seen[0]
    assert {(e.thread, e.first.kind, e.second.kind) for e in report.edges} == {
        ("forward", "Lock", "RLock"),
        ("backward", "RLock", "Lock"),
    }
    text = report.text
    assert "Lock-order inversion (potential deadlock)" in text
    assert text.count(f"created at {__file__}") == 4  # each class, in each order
    for edge in report.edges:
        assert edge.first_acquired is not None
        assert edge.first_acquired.filename == __file__
        assert edge.second_acquired.filename == __file__
        assert f"at {edge.second_acquired}" in text
        assert f"acquired at {edge.first_acquired}" in text
    # reported once
    in_thread(backward, "backward-again")
    assert checker.take_reports() == []


def test_a_three_class_cycle(checker: LockOrderChecker) -> None:
    a = threading.Lock()
    b = threading.Lock()
    c = threading.Lock()
    for outer, inner in ((a, b), (b, c)):
        with outer, inner:
            pass
    assert checker.take_reports() == []
    with c, a:
        pass
    (report,) = checker.take_reports()
    assert len(report.edges) == 3


def test_consistent_orders_reentry_and_try_acquire_are_not_reported(
    checker: LockOrderChecker,
) -> None:
    outer, inner = threading.RLock(), threading.Lock()

    def consistent() -> None:
        with outer, inner, outer:  # RLock re-entry while holding inner: not a new order
            pass

    for name in ("t1", "t2", "t3"):
        in_thread(consistent, name)
    with inner:
        assert outer.acquire(blocking=False)  # a try-acquire cannot deadlock
        outer.release()
        assert outer.acquire(timeout=1)  # nor can a timed one wait forever
        outer.release()
    assert checker.take_reports() == []


def test_stdlib_primitives_produce_no_reports(checker: LockOrderChecker) -> None:
    user_lock = threading.Lock()
    q: queue.Queue[int] = queue.Queue()
    cond = threading.Condition()
    event = threading.Event()
    sem = threading.BoundedSemaphore(2)
    log = logging.getLogger("netthreads-lockorder-test")
    handler = logging.StreamHandler(io.StringIO())
    log.addHandler(handler)
    try:

        def work(i: int) -> int:
            with user_lock:
                q.put(i)
                log.warning("item %d", i)
            with sem, cond:
                cond.notify_all()
            event.set()
            return q.get(timeout=10)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(work, i) for i in range(40)]
            done, _ = concurrent.futures.wait(futures, timeout=10)
            assert len(done) == 40
            assert sorted(f.result() for f in futures) == list(range(40))
        with cond:
            cond.wait(0.01)
        with user_lock:
            log.warning("under the user lock")
            event.wait(1)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert checker.take_reports() == []


def test_the_kits_own_locks_produce_no_reports(checker: LockOrderChecker) -> None:
    import socket

    user_lock = threading.Lock()
    with ThreadedServer(handlers.echo, concurrency="thread") as server:
        for _ in range(3):
            with user_lock, socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(b"ping")
                assert sock.recv(4) == b"ping"
    assert checker.take_reports() == []


def test_on_report_callback_and_restart_errors() -> None:
    got: list[LockOrderReport] = []
    with LockOrderChecker(on_report=got.append) as chk:
        a = threading.Lock()
        b = threading.Lock()
        with a, b:
            pass
        with b, a:
            pass
        with pytest.raises(RuntimeError, match="already started"):
            chk.start()
    assert len(got) == 1


def test_locks_created_at_one_line_are_one_class(checker: LockOrderChecker) -> None:
    # Documented limit: per-object locks made at one line cannot be told apart by site.
    left, right = threading.Lock(), threading.Lock()
    with left, right:
        pass
    with right, left:
        pass
    assert left.lock_class is right.lock_class
    assert checker.take_reports() == []


def test_an_inversion_with_locks_shared_by_threads_and_deeper_nesting(
    checker: LockOrderChecker,
) -> None:
    # The same lock objects pass between threads (each lock caches the last thread's held
    # list); the inversion is between the first and the third of a three-deep nesting, whose
    # edge is new while the edge from the lock taken just before the third is not.
    first = threading.Lock()
    middle = threading.Lock()
    third = threading.Lock()

    def inner_pair() -> None:
        with middle, third:
            pass

    def forward() -> None:
        with first, middle, third:
            pass

    def backward() -> None:
        with third:
            with first:
                pass

    in_thread(inner_pair, "inner pair")
    in_thread(forward, "forward")
    assert checker.take_reports() == []
    in_thread(backward, "backward")
    (report,) = checker.take_reports()
    assert {edge.thread for edge in report.edges} == {"forward", "backward"}
    assert len(report.edges) == 2  # first -> third and third -> first, middle not needed
