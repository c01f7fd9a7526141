"""ThreadLeakChecker used directly, without the plugin: real threads, joined by each test."""

from __future__ import annotations

import concurrent.futures
import gc
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from pytest_netthreads._runtime.threads import mark_internal
from pytest_netthreads.detect.threadleak import ThreadLeakChecker, ThreadLeakError


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """An event the test's threads wait on; set at teardown (then each test joins them)."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def idle(stop: threading.Event) -> Iterator[list[threading.Thread]]:
    """Threads waiting on ``stop`` (not started): stopped and joined at teardown."""
    threads = [threading.Thread(target=stop.wait, args=(60,), name=n) for n in ("one", "two")]
    yield threads
    stop.set()
    for thread in threads:
        if thread.ident is not None:
            thread.join(10)


@pytest.fixture
def checker() -> Iterator[ThreadLeakChecker]:
    checker = ThreadLeakChecker(grace=0).start()
    yield checker
    checker.stop()


def test_a_thread_left_running_raises_with_its_name_target_and_start_line(
    stop: threading.Event,
) -> None:
    thread = threading.Thread(target=stop.wait, args=(60,), name="left-running", daemon=True)
    with pytest.raises(ThreadLeakError) as info, ThreadLeakChecker(grace=0):
        thread.start()
    stop.set()
    thread.join(10)
    message = str(info.value)
    assert "1 thread(s) started by the checked block still running 0s after" in message
    assert "--- thread 'left-running' (daemon), target threading.Event.wait" in message
    assert f"started at {__file__}:" in message
    assert "thread.start()" in message  # the start stack shows the source line
    assert [leak.name for leak in info.value.threads] == ["left-running"]
    assert info.value.threads[0].thread is thread


def test_threads_that_finish_within_the_grace_are_joined_not_reported() -> None:
    done = threading.Event()
    with ThreadLeakChecker(grace=60):
        threading.Thread(target=done.wait, args=(60,), name="finishing").start()
        # The thread is still running when the block ends; it finishes while being joined.
        threading.Timer(0.05, done.set).start()
    assert not [t for t in threading.enumerate() if t.name == "finishing"]


def test_stop_restores_what_start_patched() -> None:
    originals = (
        threading.Thread.start,
        concurrent.futures.ThreadPoolExecutor.__init__,
        socket.socket.__init__,
    )
    checker = ThreadLeakChecker(sockets=True).start()
    try:
        assert threading.Thread.start is not originals[0]
        assert socket.socket.__init__ is not originals[2]
        with pytest.raises(RuntimeError, match="already started"):
            checker.start()
    finally:
        checker.stop()
    assert (
        threading.Thread.start,
        concurrent.futures.ThreadPoolExecutor.__init__,
        socket.socket.__init__,
    ) == originals


def test_owners_are_checked_separately_and_each_thread_reported_once(
    checker: ThreadLeakChecker, idle: list[threading.Thread]
) -> None:
    for owner, thread in zip("ab", idle):
        with checker.owned_by(owner):
            thread.start()
    assert [(leak.name, leak.owner) for leak in checker.check("a")] == [("one", "a")]
    assert checker.check("a") == []  # already reported
    assert checker.check("b", allow=None) == []  # every thread allowed
    assert checker.owners() == []


def test_nothing_is_tracked_without_an_owner_or_for_internal_threads(
    checker: ThreadLeakChecker, idle: list[threading.Thread]
) -> None:
    idle[0].start()  # no owner set
    with checker.owned_by("test"):
        mark_internal(idle[1])
        idle[1].start()
    assert checker.check("test") == []
    assert checker.owners() == []


def test_pool_threads_belong_to_whoever_created_the_pool() -> None:
    before = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="old-pool")
    checker = ThreadLeakChecker(grace=0).start()
    try:
        with checker.owned_by("fixture"):
            fixture_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fx")
        with checker.owned_by("test"):
            assert before.submit(sum, [1]).result(timeout=30) == 1
            assert fixture_pool.submit(sum, [2]).result(timeout=30) == 2
        assert checker.check("test") == []
        assert [leak.name for leak in checker.check("fixture")] == ["fx_0"]
    finally:
        checker.stop()
        before.shutdown()
        fixture_pool.shutdown()


def test_ignore_patterns_match_thread_names(stop: threading.Event) -> None:
    thread = threading.Thread(target=stop.wait, args=(60,), name="heartbeat-1", daemon=True)
    with ThreadLeakChecker(grace=0, ignore=[r"^heartbeat-\d+$"]):
        thread.start()
    stop.set()
    thread.join(10)


_GRACE = r"grace must be a finite number of seconds >= 0 and <= 9.22337e\+09"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"grace": -1}, ValueError, rf"{_GRACE}, got -1"),
        ({"grace": float("nan")}, ValueError, rf"{_GRACE}, got nan"),
        (
            {"grace": float("inf")},
            ValueError,
            rf"{_GRACE}, got inf",
        ),
        ({"grace": 10**10}, ValueError, rf"{_GRACE}, got 10000000000"),
        ({"grace": "1"}, TypeError, "grace must be a finite number of seconds .*, got '1'"),
        ({"grace": True}, TypeError, "grace must be a finite number of seconds .*, got True"),
        ({"grace": None}, TypeError, "grace must be a finite number of seconds .*, got None"),
        ({"sockets": "yes"}, TypeError, "sockets must be True or False, got 'yes'"),
        ({"sockets": 1}, TypeError, "sockets must be True or False, got 1"),
        ({"ignore": "worker"}, TypeError, "ignore must be an iterable of regexes"),
        ({"ignore": [3]}, TypeError, "ignore must be regular expressions"),
        ({"ignore": ["("]}, ValueError, r"ignore: '\(' is not a valid regular expression"),
    ],
)
def test_bad_arguments_name_the_parameter(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ThreadLeakChecker(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.check("o", grace=float("inf")), ValueError, _GRACE),
        (lambda c: c.check("o", grace=-0.5), ValueError, _GRACE),
        (lambda c: c.check("o", grace=False), TypeError, _GRACE),
        (lambda c: c.check("o", allow=["x"]), TypeError, "allow must be compiled regexes"),
        (lambda c: c.check_sockets("o", grace=float("nan")), ValueError, "grace must be a"),
        (lambda c: c.check_all("o", grace="2"), TypeError, "grace must be a finite number"),
        (lambda c: c.set_owner(["a list"]), TypeError, "owner must be hashable"),
        (lambda c: c.owned_by({}).__enter__(), TypeError, "owner must be hashable"),
    ],
)
def test_bad_check_arguments_fail_at_the_call(
    call: Callable[[ThreadLeakChecker], object], error: type[Exception], message: str
) -> None:
    checker = ThreadLeakChecker(grace=0, sockets=True)
    with pytest.raises(error, match=message):
        call(checker)
    assert checker.owner is None


def test_finished_threads_are_not_kept_alive_by_the_checker(checker: ThreadLeakChecker) -> None:
    # Not even before their owner is checked: a library's Thread subclass may be its
    # connection object, which its own tests expect to be collected once closed.
    with checker.owned_by("test"):
        thread = threading.Thread(target=int, name="short")
        thread.start()
    thread.join(10)
    assert not thread.is_alive()
    ref = weakref.ref(thread)
    del thread
    gc.collect()
    assert ref() is None, "the checker keeps a finished thread alive"
    assert checker.check("test") == []


def test_a_running_thread_is_reported_with_what_was_captured_at_its_start(
    checker: ThreadLeakChecker, stop: threading.Event
) -> None:
    with checker.owned_by("test"):
        threading.Thread(target=stop.wait, args=(60,), name="unreferenced", daemon=True).start()
    gc.collect()
    [leak] = checker.check("test")
    stop.set()
    leak.thread.join(10)
    assert (leak.name, leak.target, leak.owner) == ("unreferenced", "threading.Event.wait", "test")
    assert leak.started_at.startswith(f"{__file__}:")
    assert "threading.Thread(target=stop.wait" in leak.start_stack


def _close_soon(sock: socket.socket, release: threading.Event) -> None:
    release.wait(60)
    time.sleep(0.2)  # the work it does before closing: the check waits by joining it
    sock.close()


@pytest.mark.parametrize("method", ["check_sockets", "check_all"])
def test_a_socket_the_owners_exiting_thread_closes_within_the_grace_is_not_a_leak(
    method: str,
) -> None:
    checker = ThreadLeakChecker(grace=60, sockets=True).start()
    release = threading.Event()
    try:
        with checker.owned_by("test"):
            sock = socket.socket()
            thread = threading.Thread(target=_close_soon, args=(sock, release), name="closer")
            thread.start()
        release.set()
        if method == "check_sockets":
            assert checker.check_sockets("test") == []
        else:
            # every thread allowed (as with --socket-leak-check alone): joined all the same
            assert checker.check_all("test", allow=None) == ([], [])
        assert sock.fileno() == -1
    finally:
        checker.stop()
        release.set()
        thread.join(10)


def test_check_all_reports_sockets_still_open_after_the_grace(stop: threading.Event) -> None:
    checker = ThreadLeakChecker(grace=0.05, sockets=True).start()
    try:
        with checker.owned_by("test"):
            sock = socket.socket()
            thread = threading.Thread(target=stop.wait, args=(60,), name="holder", daemon=True)
            thread.start()
        threads, sockets = checker.check_all("test")
        assert [leak.name for leak in threads] == ["holder"]
        assert [leak.socket for leak in sockets] == [sock]
        assert checker.owners() == []
    finally:
        checker.stop()
        stop.set()
        thread.join(10)
        sock.close()


def test_a_thread_started_with_the_thread_module_is_reported_and_the_patch_undone(
    stop: threading.Event,
) -> None:
    import _thread

    original = _thread.start_new_thread
    finished = threading.Event()

    def wait_then_signal() -> None:
        stop.wait(60)
        finished.set()

    with pytest.raises(ThreadLeakError) as info:
        with ThreadLeakChecker(grace=0.1):
            assert _thread.start_new_thread is not original  # patched while it runs
            _thread.start_new_thread(wait_then_signal, ())
    assert _thread.start_new_thread is original
    stop.set()
    assert finished.wait(10)
    [leak] = info.value.threads
    assert leak.thread is None and leak.name.startswith("<_thread ")
    assert leak.target.endswith("wait_then_signal")
    assert leak.started_at.startswith(f"{__file__}:")
    assert "in wait_then_signal" in leak.current_stack
    assert "(started with _thread, no Thread object)" in str(info.value)

    done = threading.Event()
    with ThreadLeakChecker(grace=5):  # one that ends within the grace is no leak
        _thread.start_new_thread(done.set, ())
    assert done.is_set()
