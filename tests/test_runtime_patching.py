"""One patching helper: patches restore only what is still their own, and say who patched what.

The helper itself, then the three places that patch through it (the thread-leak checker, lock
tracking, in-process socket faults): each used to restore its original over a patch made
after its own (or delete it), silently.
"""

from __future__ import annotations

import concurrent.futures
import socket
import ssl
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_netthreads._runtime import patching
from pytest_netthreads._runtime.patching import Patch, PatchConflict, active, patch, undo_all
from pytest_netthreads.detect import locks
from pytest_netthreads.detect.threadleak import ThreadLeakChecker
from pytest_netthreads.faults import SocketFaults
from pytest_netthreads.faults.insocket import patched

CONFLICT = "was replaced after it was patched"


class Base:
    def greet(self) -> str:
        return "base"


class Child(Base):
    def own(self) -> str:
        return "child"


def _greet(self: Any) -> str:
    return "patched"


@pytest.fixture
def module() -> types.ModuleType:
    mod = types.ModuleType("fake_module")
    mod.value = 1  # type: ignore[attr-defined]
    return mod


@pytest.fixture(autouse=True)
def no_patch_left_behind() -> Iterator[None]:
    before = active()
    yield
    assert active() == before


def test_an_own_attribute_is_set_back_and_an_inherited_one_deleted() -> None:
    original = vars(Child)["own"]
    own = patch(Child, "own", _greet, by="test")
    inherited = patch(Child, "greet", _greet, by="test")
    assert (Child().own(), Child().greet()) == ("patched", "patched")
    assert inherited.inherited and not own.inherited
    assert own.original is original and inherited.original is None
    inherited.undo()
    own.undo()
    assert "greet" not in vars(Child)  # deleted, not shadowed with a copy of Base's
    assert vars(Child)["own"] is original
    assert (Child().own(), Child().greet()) == ("child", "base")


def test_a_module_attribute_and_a_new_one(module: types.ModuleType) -> None:
    changed = patch(module, "value", 2, by="test")
    added = patch(module, "extra", 3, by="test")
    assert (module.value, module.extra) == (2, 3)
    added.undo()
    changed.undo()
    assert module.value == 1 and not hasattr(module, "extra")


def test_undo_refuses_to_restore_over_someone_elses_patch(module: types.ModuleType) -> None:
    ours = patch(module, "value", 2, by="the checker")
    module.value = 99  # type: ignore[attr-defined]  # someone else, after us
    with pytest.raises(PatchConflict, match=CONFLICT) as info:
        ours.undo()
    message = str(info.value)
    assert message.startswith("the checker: fake_module.value was replaced after it was patched")
    assert "it is now 99" in message
    assert module.value == 99  # theirs, untouched
    assert ours in active()
    assert not ours.undone
    assert not ours.in_place
    module.value = 2  # type: ignore[attr-defined]  # they undo theirs (back to ours)
    ours.undo()  # now it is ours again
    assert module.value == 1 and ours.undone and ours not in active()
    ours.undo()  # idempotent
    assert module.value == 1


def test_a_deleted_attribute_is_a_conflict_too() -> None:
    ours = patch(Child, "greet", _greet, by="test")
    del Child.greet
    with pytest.raises(PatchConflict, match="it is now None"):
        ours.undo()
    Child.greet = _greet  # type: ignore[method-assign]
    ours.undo()
    assert "greet" not in vars(Child)


def test_active_lists_what_is_patched_and_by_whom(module: types.ModuleType) -> None:
    first = patch(module, "value", 2, by="first")
    second = patch(Child, "greet", _greet, by="second")
    mine = [p for p in active() if p in (first, second)]
    assert mine == [first, second]  # oldest first
    assert [(p.describe(), p.by) for p in mine] == [
        ("fake_module.value", "first"),
        (f"{__name__}.Child.greet", "second"),
    ]
    assert "active" in repr(first) and "fake_module.value by first" in repr(first)
    undo_all([first, second])
    assert "undone" in repr(first)


def test_undo_all_goes_newest_first_and_keeps_conflicts_for_a_retry(
    module: types.ModuleType,
) -> None:
    outer = patch(module, "value", 2, by="outer")
    inner = patch(module, "value", 3, by="inner")  # stacked on the outer one
    other = patch(module, "other", 4, by="other")
    patches = [outer, inner, other]
    undo_all(patches)  # newest first: other, inner (back to 2), outer (back to 1)
    assert patches == [] and module.value == 1 and not hasattr(module, "other")

    outer = patch(module, "value", 2, by="outer")
    inner = patch(module, "value", 3, by="inner")
    patches = [inner, outer]  # the wrong order: outer is undone first and must refuse
    with pytest.raises(PatchConflict, match="outer: "):
        undo_all(patches)
    assert patches == [outer] and module.value == 2  # inner undone; outer kept
    undo_all(patches)
    assert patches == [] and module.value == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((object(), "x", 1), "target must be a class or a module"),
        ((Child, 1, 1), "name must be a non-empty str"),
        ((Child, "", 1), "name must be a non-empty str"),
    ],
)
def test_bad_arguments_fail_at_the_call(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        patch(*args, by="test")
    with pytest.raises(TypeError, match="by must be a non-empty str"):
        patch(Child, "greet", _greet, by="")
    assert "greet" not in vars(Child)


def test_patch_records_the_raw_descriptor() -> None:
    """A classmethod is restored as the classmethod object, not as a bound method."""
    original = vars(ssl.SSLSocket)["_create"]
    applied = patch(ssl.SSLSocket, "_create", classmethod(lambda cls: None), by="test")
    assert isinstance(applied, Patch) and applied.original is original
    applied.undo()
    assert vars(ssl.SSLSocket)["_create"] is original


# -- the three users ----------------------------------------------------------------------
# Each test plays "someone else" (a library, a test's monkeypatch) patching on top of the kit
# and undoing in the wrong order. The old code restored its original over theirs silently.


def test_the_thread_leak_checker_leaves_a_later_patch_in_place() -> None:
    before = (threading.Thread.start, concurrent.futures.ThreadPoolExecutor.__init__)
    checker = ThreadLeakChecker(grace=0).start()
    ours = threading.Thread.start

    def theirs(thread: threading.Thread) -> None:
        ours(thread)

    setattr(threading.Thread, "start", theirs)  # noqa: B010
    try:
        with pytest.raises(RuntimeError, match=CONFLICT):
            checker.stop()
        assert threading.Thread.start is theirs
        # What was not replaced is restored.
        assert concurrent.futures.ThreadPoolExecutor.__init__ is before[1]
    finally:
        setattr(threading.Thread, "start", ours)  # noqa: B010  # they undo theirs
    checker.stop()  # and now the checker can undo its own
    assert (threading.Thread.start, concurrent.futures.ThreadPoolExecutor.__init__) == before


def test_lock_tracking_leaves_a_later_patch_in_place() -> None:
    original = (threading.Lock, threading.RLock, threading.Thread.join)
    locks.install()
    ours = threading.Lock

    def theirs() -> Any:
        return ours()

    setattr(threading, "Lock", theirs)  # noqa: B010
    try:
        with pytest.raises(RuntimeError, match=CONFLICT):
            locks.uninstall()
        assert threading.Lock is theirs
        assert (threading.RLock, threading.Thread.join) == original[1:]
        assert not locks.installed()
    finally:
        setattr(threading, "Lock", ours)  # noqa: B010
    with locks.tracking():  # the next last uninstall tries the kept one again
        pass
    assert (threading.Lock, threading.RLock, threading.Thread.join) == original


def test_socket_faults_leave_a_later_patch_in_place() -> None:
    before = (dict(vars(socket.socket)), dict(vars(ssl.SSLSocket)))
    faults = SocketFaults().install()
    ours = vars(socket.socket)["recv"]

    def theirs(sock: socket.socket, *args: Any) -> Any:
        return ours(sock, *args)

    setattr(socket.socket, "recv", theirs)  # noqa: B010  # e.g. pytest-socket, gevent
    try:
        with pytest.raises(RuntimeError, match=CONFLICT):
            faults.undo()
        assert vars(socket.socket)["recv"] is theirs  # not deleted
        assert "send" not in vars(socket.socket)  # the rest is restored
    finally:
        setattr(socket.socket, "recv", ours)  # noqa: B010
    assert patched()
    SocketFaults().install().undo()  # the next undo tries the kept one again
    assert not patched()
    assert (dict(vars(socket.socket)), dict(vars(ssl.SSLSocket))) == before


def test_the_kit_names_itself_in_active_while_patching() -> None:
    with ThreadLeakChecker(grace=0, sockets=True), locks.tracking(), SocketFaults():
        by = {(p.describe(), p.by) for p in patching.active()}
    assert {
        ("threading.Thread.start", "ThreadLeakChecker"),
        ("concurrent.futures.thread.ThreadPoolExecutor.__init__", "ThreadLeakChecker"),
        ("socket.socket.__init__", "ThreadLeakChecker"),
        ("threading.Lock", "pytest-netthreads lock tracking"),
        ("threading.RLock", "pytest-netthreads lock tracking"),
        ("threading.Thread.join", "pytest-netthreads lock tracking"),
        ("socket.socket.recv", "SocketFaults"),
        ("ssl.SSLSocket._create", "SocketFaults"),
    } <= by
