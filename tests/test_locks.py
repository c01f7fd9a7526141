"""Tracked Lock/RLock: the full lock API, the stdlib primitives built on them, bookkeeping."""

from __future__ import annotations

import _thread
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads.detect import locks
from pytest_netthreads.detect.locks import TrackedLock, TrackedRLock

ORIGINAL_LOCK = threading.Lock  # a function before Python 3.13, the lock type since


@pytest.fixture
def tracking() -> Iterator[None]:
    with locks.tracking(deadlock=True, lock_order=True):
        yield
    assert threading.Lock is ORIGINAL_LOCK


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def test_lock_api_matches_a_plain_lock(tracking: None) -> None:
    lock = threading.Lock()
    assert isinstance(lock, TrackedLock)
    assert not lock.locked()
    assert lock.acquire()
    assert lock.locked()
    assert lock.owner == threading.get_ident()
    assert lock.acquire(False) is False
    assert lock.acquire(True, 0.01) is False
    assert lock.acquire(timeout=0) is False
    lock.release()
    assert not lock.locked()
    assert lock.owner is None
    with pytest.raises(RuntimeError):
        lock.release()
    with lock:
        assert lock.locked()
    assert not lock.locked()


@pytest.mark.parametrize("factory", ["Lock", "RLock"])
def test_bad_arguments_raise_like_the_originals(tracking: None, factory: str) -> None:
    lock = getattr(threading, factory)()
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(False, 1.0)
    with pytest.raises(ValueError, match="timeout"):
        lock.acquire(True, -5)


def test_plain_lock_may_be_released_by_another_thread(tracking: None) -> None:
    lock = threading.Lock()
    lock.acquire()
    releaser = threading.Thread(target=lock.release)
    releaser.start()
    releaser.join(10)
    assert not lock.locked()
    assert lock.owner is None
    assert locks.held_locks(threading.get_ident()) == []


def test_rlock_reentry_and_ownership(tracking: None) -> None:
    rlock = threading.RLock()
    assert isinstance(rlock, TrackedRLock)
    with rlock, rlock:
        assert rlock._recursion_count() == 2
        assert rlock._is_owned()
        errors: list[BaseException] = []

        def other() -> None:
            try:
                rlock.release()
            except RuntimeError as exc:
                errors.append(exc)
            assert rlock.acquire(False) is False

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(10)
        assert len(errors) == 1
    assert not rlock.locked()
    with pytest.raises(RuntimeError):
        rlock.release()


def test_creation_site_and_acquisition_site(tracking: None) -> None:
    lock = threading.Lock()
    created_line = test_creation_site_and_acquisition_site.__code__.co_firstlineno + 1
    site = lock.lock_class.site
    assert site.filename == __file__
    assert site.lineno == created_line
    assert lock.lock_class.via is None
    with lock:
        acquired = lock.acquired_at()
        assert acquired is not None
        assert (acquired.filename, acquired.lineno) == (__file__, created_line + 6)
    q: queue.Queue[int] = queue.Queue()
    mutex = q.mutex
    assert isinstance(mutex, TrackedLock)
    assert mutex.lock_class.site.filename == __file__
    assert mutex.lock_class.via is not None
    assert "Queue.__init__" in mutex.lock_class.via.function


def test_stdlib_primitives_work_across_threads(tracking: None) -> None:
    q: queue.Queue[int] = queue.Queue(maxsize=2)
    done = threading.Event()
    sem = threading.Semaphore(0)
    barrier = threading.Barrier(2, timeout=10)
    cond = threading.Condition()
    box: list[int] = []

    def worker() -> None:
        barrier.wait()
        for i in range(20):
            q.put(i, timeout=10)
        sem.release()
        with cond:
            box.append(1)
            cond.notify_all()
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    barrier.wait()
    assert [q.get(timeout=10) for _ in range(20)] == list(range(20))
    assert sem.acquire(timeout=10)
    with cond:
        assert cond.wait_for(lambda: box, timeout=10)
    assert done.wait(10)
    thread.join(10)
    assert not thread.is_alive()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda x: x * x, range(30))) == [x * x for x in range(30)]
    assert locks.waits() == {}


def test_a_blocked_acquire_and_a_join_are_visible_waits(tracking: None) -> None:
    lock = threading.Lock()
    lock.acquire()
    worker = threading.Thread(target=lambda: lock.acquire() and lock.release(), name="w-1")
    worker.start()
    wait_until(lambda: worker.ident in locks.waits())
    wait = locks.waits()[worker.ident or 0]
    assert wait.target is lock
    assert not wait.timed
    assert wait.site.filename == __file__
    joiner = threading.Thread(target=worker.join, name="joiner")
    joiner.start()
    wait_until(lambda: joiner.ident in locks.waits())
    assert locks.waits()[joiner.ident or 0].target is worker
    lock.release()
    joiner.join(10)
    worker.join(10)
    assert not joiner.is_alive() and not worker.is_alive()
    assert locks.waits() == {}


def test_timed_acquire_times_out_in_a_tracked_wait(tracking: None) -> None:
    lock = threading.RLock()
    lock.acquire()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(lock.acquire(timeout=0.2)))
    thread.start()
    thread.join(10)
    lock.release()
    assert result == [False]


def test_abort_request_raises_in_the_waiting_thread(tracking: None) -> None:
    lock = threading.Lock()
    lock.acquire()
    raised: list[BaseException] = []

    def blocked() -> None:
        try:
            lock.acquire()
        except KeyError as exc:
            raised.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    wait_until(lambda: thread.ident in locks.waits())
    locks.request_abort(thread.ident or 0, KeyError("stop"))
    thread.join(10)
    lock.release()
    assert len(raised) == 1
    assert locks.waits() == {}


def test_kit_and_runner_locks_stay_plain(tracking: None) -> None:
    with ThreadedServer(handlers.echo) as server:
        assert type(server._lock) is _thread.LockType
    assert isinstance(threading.Lock(), TrackedLock)


def test_install_is_nestable_and_restores_threading() -> None:
    original = (threading.Lock, threading.RLock, threading.Thread.join)
    with locks.tracking():
        with locks.tracking(lock_order=True):
            assert isinstance(threading.RLock(), TrackedRLock)
        assert isinstance(threading.Lock(), TrackedLock)
    assert (threading.Lock, threading.RLock, threading.Thread.join) == original
    with pytest.raises(RuntimeError, match="not installed"):
        locks.uninstall()


def test_threading_lock_keeps_its_kind_while_tracked(tracking: None) -> None:
    tracked = threading.Lock()
    plain = _thread.allocate_lock()
    assert isinstance(tracked, TrackedLock)
    if isinstance(ORIGINAL_LOCK, type):
        # Python 3.13+: threading.Lock is the lock type; isinstance() must keep working for
        # tracked locks and for plain ones (made before tracking, or by the kit).
        assert isinstance(threading.Lock, type)
        assert isinstance(tracked, threading.Lock)
        assert isinstance(plain, threading.Lock)
        assert not isinstance(threading.RLock(), threading.Lock)
        assert issubclass(TrackedLock, threading.Lock)
        assert issubclass(_thread.LockType, threading.Lock)
        assert not issubclass(TrackedRLock, threading.Lock)
        with pytest.raises(TypeError, match="not an acceptable base type"):
            type("MyLock", (threading.Lock,), {})
        with pytest.raises(TypeError):
            threading.Lock(1)  # type: ignore[call-arg]
    else:
        # Before 3.13 threading.Lock is a factory function, while tracked too.
        assert not isinstance(threading.Lock, type)
        with pytest.raises(TypeError):
            isinstance(tracked, threading.Lock)  # type: ignore[arg-type]
    # The stdlib primitives built on threading.Lock work either way.
    event = threading.Event()
    assert isinstance(event._cond._lock, TrackedLock)  # type: ignore[attr-defined]
    event.set()
    assert event.wait(1)


def test_release_errors_match_a_plain_lock(tracking: None) -> None:
    for lock in (threading.Lock(), _thread.allocate_lock()):
        with pytest.raises(RuntimeError):
            lock.release()
        # released by another thread inside the `with`: leaving it raises, as for a plain lock
        with pytest.raises(RuntimeError):
            with lock:
                releaser = threading.Thread(target=lock.release)
                releaser.start()
                releaser.join(10)
        assert not lock.locked()
        assert lock.acquire(False)  # still one lock: one holder at a time
        assert not lock.acquire(False)
        lock.release()


def test_held_locks_follow_out_of_order_and_mode_changes() -> None:
    me = threading.get_ident()
    with locks.tracking(deadlock=True):
        early = threading.Lock()
        early.acquire()  # taken while the lock-order bookkeeping is off
        with locks.tracking(deadlock=False, lock_order=True):
            first = threading.Lock()
            second = threading.RLock()
            first.acquire()
            second.acquire()
            assert locks.held_locks(me) == [first, second]
            first.release()  # not the last one taken
            assert locks.held_locks(me) == [second]
            with first:
                assert locks.held_locks(me) == [second, first]
            early.release()  # never was on the list
            second.release()
            assert locks.held_locks(me) == []
        assert not early.locked() and not first.locked() and not second.locked()


def test_held_locks_stay_per_thread_when_one_lock_changes_threads(tracking: None) -> None:
    # Each lock remembers the held list of the last thread that took it; taking it from
    # another thread, by `with` or by acquire(), must move it to that thread's list.
    shared = threading.Lock()
    outer = threading.Lock()
    seen: dict[str, list[object]] = {}

    def worker(name: str, use_with: bool) -> None:
        me = threading.get_ident()
        with outer:
            if use_with:
                with shared:
                    seen[name] = locks.held_locks(me)
            else:
                shared.acquire()
                seen[name] = locks.held_locks(me)
                shared.release()
        seen[name + " after"] = locks.held_locks(me)

    main = threading.get_ident()
    for name, use_with in (("a", True), ("b", False), ("c", True), ("d", True)):
        with shared:
            assert locks.held_locks(main) == [shared]
        thread = threading.Thread(target=worker, args=(name, use_with))
        thread.start()
        thread.join(10)
        assert not thread.is_alive()
        assert seen[name] == [outer, shared]
        assert seen[name + " after"] == []
        assert locks.held_locks(main) == []


def test_held_locks_work_again_after_the_check_restarts() -> None:
    me = threading.get_ident()
    with locks.tracking(deadlock=True):
        a = threading.Lock()
        b = threading.Lock()
        for _ in range(2):
            with locks.tracking(deadlock=False, lock_order=True):
                with a, b:
                    assert locks.held_locks(me) == [a, b]
                assert locks.held_locks(me) == []
            with a, b:  # check off: nothing recorded
                assert locks.held_locks(me) == []


class _Index:
    def __index__(self) -> int:
        return 0


# blocking, timeout: what a plain lock of this Python raises (or returns) for each.
ACQUIRE_ARGUMENTS = [
    (True, float("nan")),
    (True, float("inf")),
    (True, -float("inf")),
    (True, 1e10),  # beyond threading.TIMEOUT_MAX
    (True, 10**30),
    (True, -1.5),
    (True, -1.0),  # the "no timeout" value, as a float
    (True, "1"),
    (True, None),
    ("yes", -1),
    (None, -1),
    (1.5, -1),
    (0, -1),
    (False, 0),
    (False, 0.0),
    (_Index(), -1),
    (True, _Index()),
    (True, True),  # a bool is an int: one second
    (True, 0.01),
]


@pytest.mark.parametrize("factory", ["Lock", "RLock"])
@pytest.mark.parametrize(("blocking", "timeout"), ACQUIRE_ARGUMENTS)
def test_acquire_arguments_behave_as_a_plain_locks(
    factory: str, blocking: object, timeout: object
) -> None:
    def outcome(lock: Any) -> str:
        try:
            return repr(lock.acquire(blocking, timeout))
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    plain = getattr(threading, factory)()
    expected = outcome(plain)
    with locks.tracking(deadlock=True, lock_order=True):
        tracked = getattr(threading, factory)()
        assert isinstance(tracked, (TrackedLock, TrackedRLock))
        assert outcome(tracked) == expected
        if factory == "RLock" and tracked.locked():
            # Re-entry checks the arguments too, as an RLock does.
            assert outcome(tracked) == outcome(plain)


def test_tracking_flags_and_abort_requests_are_checked() -> None:
    with pytest.raises(TypeError, match="deadlock must be a bool"):
        locks.install(deadlock=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lock_order must be a bool"):
        locks.tracking(lock_order="yes").__enter__()  # type: ignore[arg-type]
    assert not locks.installed()
    with pytest.raises(TypeError, match="exc must be an exception instance"):
        locks.request_abort(threading.get_ident(), "stop")  # type: ignore[arg-type]
    assert locks.cancel_abort(threading.get_ident()) is None
