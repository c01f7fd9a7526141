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
    assert not checker.has_reports()
    with c, a:
        pass
    assert checker.has_reports()
    (report,) = checker.take_reports()
    assert len(report.edges) == 3
    assert not checker.has_reports()


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


def test_futures_waited_on_in_one_thread_form_no_edges(checker: LockOrderChecker) -> None:
    # wait() and as_completed() take the futures' condition locks in id() order: with futures
    # from two submit() lines, both orders of the two lock classes happen in one thread. Those
    # locks are the standard library's own (created through submit()): no edges.
    orders = set()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        kept = []
        for i in range(200):
            first = pool.submit(int, 1)
            second = pool.submit(int, 2)
            orders.add(id(first) < id(second))
            concurrent.futures.wait([first, second], timeout=10)
            for future in concurrent.futures.as_completed([second, first], timeout=10):
                future.result()
            if i % 3 == 0:
                kept.append(first)  # shuffles which memory the next futures get
            if len(orders) == 2 and i >= 20:
                break
    assert orders == {True, False}  # both orders were exercised
    assert checker.take_reports() == []


def test_stdlib_primitives_in_one_thread_under_a_user_lock_form_no_edges(
    checker: LockOrderChecker,
) -> None:
    # Each primitive's internal lock is taken under the user locks, in one thread: the
    # internal locks are in no edge, the user locks' own order is recorded.
    outer = threading.Lock()
    inner = threading.RLock()
    q: queue.Queue[int] = queue.Queue()
    event = threading.Event()
    barrier = threading.Barrier(1)
    sem = threading.Semaphore(1)
    with outer:
        q.put(1)
        event.set()
        with sem:
            barrier.wait(timeout=10)
        with inner:
            assert q.get(timeout=10) == 1
            assert event.wait(timeout=10)
            barrier.wait(timeout=10)
    internal = [
        q.mutex,  # type: ignore[attr-defined]
        event._cond._lock,  # type: ignore[attr-defined]
        barrier._cond._lock,  # type: ignore[attr-defined]
        sem._cond._lock,  # type: ignore[attr-defined]
    ]
    assert all(lock.lock_class.internal for lock in internal)
    assert all(lock.lock_class.after == {} for lock in internal)
    assert list(outer.lock_class.after) == [inner.lock_class]  # type: ignore[attr-defined]
    assert checker.take_reports() == []


def test_a_users_own_condition_still_takes_part(checker: LockOrderChecker) -> None:
    # Condition() called by user code makes the user's lock: its order is checked.
    cond = threading.Condition()
    lock = threading.Lock()
    assert not cond._lock.lock_class.internal  # type: ignore[attr-defined]

    def forward() -> None:
        with cond, lock:
            pass

    def backward() -> None:
        with lock, cond:
            cond.notify_all()

    in_thread(forward, "forward")
    in_thread(backward, "backward")
    (report,) = checker.take_reports()
    assert {edge.thread for edge in report.edges} == {"forward", "backward"}


def test_the_checker_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="on_report must be callable"):
        LockOrderChecker(on_report="print")  # type: ignore[arg-type]
