"""Tracked ``Lock``/``RLock`` and the process-wide tracking state.

While tracking is installed (:func:`install`), ``threading.Lock`` and ``threading.RLock``
return tracked wrappers, and ``threading.Thread.join`` records that the caller waits for the
thread. ``Condition``, ``Semaphore``, ``Event``, ``Barrier`` and ``queue.Queue`` allocate their
locks through those ``threading`` module globals, so they are tracked too.

Each tracked lock knows its *class*: where it was created (the first frame outside the
standard library, plus the standard-library entry point it came through, e.g.
``queue.Queue.__init__``). Each thread's current wait is recorded (what it waits for, from
where); each lock's owner and where the owner acquired it.

What cannot be seen:

* locks created before tracking was installed (module-level locks of modules imported
  earlier), and locks bound with ``from threading import Lock`` before that;
* C-level locks (``_thread.allocate_lock``, which ``Condition.wait`` uses for its one-shot
  waiter locks on purpose, the interpreter's own, C extensions');
* locks created by the kit itself, pytest, pluggy, execnet and xdist: they are plain locks.

Python 3.13 made ``threading.Lock`` a class (``_thread.lock``, which cannot be subclassed):
there the stand-in installed for it is a class too, so ``isinstance(x, threading.Lock)`` stays
true for tracked and plain locks alike. ``isinstance(tracked, _thread.LockType)`` is false on
every version.

The uncontended path costs a ``get_ident()``, a frame look-up and a few attribute stores (plus,
for the lock-order check, one dict look-up and store in the thread's held locks); a thread that
has to wait does so in slices (:data:`WAIT_SLICE`), so that a detector can break a deadlock by
raising in the waiting thread (:func:`request_abort`).
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from time import monotonic
from types import CodeType, FrameType
from typing import Any

from .._runtime.listeners import Listeners
from .._runtime.patching import Patch, patch, undo_all
from .._runtime.stacks import RUNNER_PACKAGES
from .._runtime.stacks import is_stdlib_file as _is_stdlib

__all__ = [
    "WAIT_SLICE",
    "LockClass",
    "Site",
    "TrackedLock",
    "TrackedRLock",
    "Wait",
    "abort_pending",
    "add_block_listener",
    "add_edge_listener",
    "cancel_abort",
    "held_locks",
    "install",
    "installed",
    "is_waiting",
    "raw_lock",
    "request_abort",
    "tracking",
    "uninstall",
    "waits",
]

#: How long a blocked tracked acquire or join waits before it looks for an abort request.
WAIT_SLICE = 0.05

_allocate = _thread.allocate_lock
_get_ident = _thread.get_ident
_getframe = sys._getframe
_ORIG_LOCK = threading.Lock
_ORIG_RLOCK = threading.RLock
_ORIG_JOIN = threading.Thread.join

# Code that creates these locks is ours, the test runner's or xdist's transport's: they stay
# plain locks.
_UNTRACKED_PREFIXES = ("pytest_netthreads", *RUNNER_PACKAGES, "execnet", "xdist")


def raw_lock() -> _thread.LockType:
    """A plain C lock that tracking never sees, whatever ``threading.Lock`` is right now: for
    the detectors' own state (a tracked lock there would report on itself)."""
    return _allocate()


def _library_codes() -> set[CodeType]:
    """The code objects of the stdlib modules whose lock calls are never the interesting site."""
    import concurrent.futures._base
    import concurrent.futures.thread
    import logging
    import queue

    codes: set[CodeType] = set()

    def add(code: CodeType) -> None:
        if code not in codes:
            codes.add(code)
            for const in code.co_consts:
                if isinstance(const, CodeType):
                    add(const)

    def visit(obj: object) -> None:
        func = getattr(obj, "__func__", obj)
        if isinstance(obj, property):
            func = obj.fget
        code = getattr(func, "__code__", None)
        if isinstance(code, CodeType):
            add(code)

    for module in (threading, queue, logging, concurrent.futures._base, concurrent.futures.thread):
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__:
                for attr in vars(value).values():
                    visit(attr)
            else:
                visit(value)
    return codes


def _line_of(code: CodeType, lasti: int) -> int:
    for start, end, line in code.co_lines():
        if start <= lasti < end and line is not None:
            return line
    return code.co_firstlineno


_LIB_CODES = _library_codes()
# A cheap first test for the hot path (a code object's hash is not cached; a str's is).
_LIB_FILES = frozenset(code.co_filename for code in _LIB_CODES)
_COND_RESTORE_CODE = threading.Condition.__dict__["_acquire_restore"].__code__
# A lock created by Condition.__init__ called from user code is the user's own lock (``with
# cond:`` holds it); every other lock created through the standard library is internal.
_COND_INIT_CODE = threading.Condition.__dict__["__init__"].__code__


def _user_frame(frame: FrameType) -> FrameType:
    """The first frame outside the stdlib synchronisation modules, from ``frame`` outwards."""
    f: FrameType | None = frame
    while f is not None and f.f_code in _LIB_CODES:
        f = f.f_back
    return frame if f is None else f


@dataclass(frozen=True)
class Site:
    """A place in the code: ``file:line in function``."""

    filename: str
    lineno: int
    function: str

    @classmethod
    def of(cls, code: CodeType, lasti: int) -> Site:
        return cls(code.co_filename, _line_of(code, lasti), code.co_name)

    @classmethod
    def of_frame(cls, frame: FrameType) -> Site:
        return cls(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


class LockClass:
    """Every lock created at one place (lockdep's "lock class").

    Attributes:
        site: where the locks were created (the first frame outside the standard library).
        via: the standard-library entry point they were created through
            (``"queue.py:...: Queue.__init__"``), or ``None`` for a direct ``Lock()``.
        kind: ``"Lock"`` or ``"RLock"``.
        after: lock-order edges from this class (filled by the lock-order check).
        internal: the standard library created these locks for its own use (a ``Queue``'s
            mutex, an ``Event``'s, ``Semaphore``'s or ``Barrier``'s condition, a ``Future``'s,
            a ``logging`` handler's): only library code holds them, so they never take part
            in the lock-order graph. A ``Condition()`` created by user code is not internal.
    """

    __slots__ = ("after", "internal", "kind", "site", "via")

    def __init__(self, site: Site, via: Site | None, kind: str, internal: bool = False) -> None:
        self.site = site
        self.via = via
        self.kind = kind
        self.internal = internal
        self.after: dict[LockClass, Any] = {}

    def describe(self) -> str:
        text = f"{self.kind} created at {self.site}"
        via = self.via
        if via is not None:
            text += f" (through {via.function}, {via.filename}:{via.lineno})"
        return text

    def __repr__(self) -> str:
        return f"<LockClass {self.describe()}>"


# Filled without a lock (dict.setdefault is atomic): a lock here could be left held by another
# thread in a forked child, where threading's own at-fork handler creates an RLock.
_classes: dict[tuple[str, int, str, int, str], LockClass] = {}
# threading's at-fork handler re-creates its _active_limbo_lock: a plain lock, as before the fork.
_THREADING_AFTER_FORK = getattr(getattr(threading, "_after_fork", None), "__code__", None)


def _qualname(frame: FrameType) -> str:
    """The qualified name of the function running in ``frame`` (``Queue.__init__``)."""
    code = frame.f_code
    name = getattr(code, "co_qualname", None)  # Python 3.11+
    if isinstance(name, str):
        return name
    # Python 3.10: find the function among the methods of the class of its first argument.
    if code.co_argcount:
        first = frame.f_locals.get(code.co_varnames[0])
        owner = first if isinstance(first, type) else type(first)
        for klass in owner.__mro__:
            for attr in vars(klass).values():
                func = getattr(attr, "__func__", attr)
                if getattr(func, "__code__", None) is code:
                    return f"{klass.__qualname__}.{code.co_name}"
    return code.co_name


def _class_for_creator(kind: str, depth: int) -> LockClass | None:
    """The class of a lock being created by the frame ``depth`` levels above this one."""
    frame: FrameType | None = _getframe(depth)
    via: FrameType | None = None
    while frame is not None and _is_stdlib(frame.f_code.co_filename):
        if frame.f_code is _THREADING_AFTER_FORK:
            return None
        via = frame
        frame = frame.f_back
    if frame is None:
        return None
    module = frame.f_globals.get("__name__")
    if isinstance(module, str) and module.split(".", 1)[0] in _UNTRACKED_PREFIXES:
        return None
    code = frame.f_code
    line = frame.f_lineno
    vfile, vline = (via.f_code.co_filename, via.f_lineno) if via is not None else ("", 0)
    key = (code.co_filename, line, vfile, vline, kind)
    cls = _classes.get(key)
    if cls is None:
        vsite = None
        if via is not None:
            vsite = Site(vfile, vline, _qualname(via))
        internal = via is not None and via.f_code is not _COND_INIT_CODE
        new = LockClass(Site(code.co_filename, line, code.co_name), vsite, kind, internal)
        cls = _classes.setdefault(key, new)  # two threads may race: one class wins
    return cls


# -- the tracking state ------------------------------------------------------------------


@dataclass
class Wait:
    """A thread blocked in a tracked acquire or in ``Thread.join``.

    Attributes:
        thread: the waiting thread.
        target: the :class:`TrackedLock`/:class:`TrackedRLock` or the ``Thread`` waited for.
        timed: whether the wait has a timeout (a timed wait ends by itself: never a deadlock).
        site: where the wait was called from.
        since: ``time.monotonic()`` when it began.
    """

    thread: threading.Thread
    target: Any
    timed: bool
    site: Site
    since: float = field(default_factory=monotonic)


_order = False  # lock-order bookkeeping (held stacks, edges) is on
_depth = 0
_install_lock = _allocate()
_graph_lock = _allocate()  # guards _waits; taken only on the slow (contended) path
_waits: dict[int, Wait] = {}
_aborts: dict[int, BaseException] = {}
_sticky: set[int] = set()
# Each thread's held locks, oldest first (lock-order check). A list, not a dict used as an
# ordered set: a dict that gains and loses a key on every acquisition is rebuilt every few
# of them, and a list's pop is cheaper than a dict's del.
_held: dict[int, list[Any]] = {}
_NOT_HELD: list[Any] = []  # never holds anything
# Called when a thread is about to block, and when a new lock-order edge appears (see
# add_block_listener, add_edge_listener).
_block_listeners: Listeners[Callable[[int], None]] = Listeners()
_edge_listeners: Listeners[Callable[[Any, Any, FrameType], None]] = Listeners()
_order_users = 0
_patches: list[Patch] = []  # what install() patched in threading (undone by the last uninstall)


def add_block_listener(listener: Callable[[int], None]) -> Callable[[], None]:
    """Call ``listener(ident)`` each time a thread registered a blocking wait without a
    timeout (a tracked acquire or ``Thread.join``), right before it blocks, in that thread.

    Returns a function that removes the listener (calling it again does nothing). The newest
    listener is called first. Raises ``TypeError`` when ``listener`` is not callable.
    """
    return _block_listeners.add(listener)


def add_edge_listener(listener: Callable[[Any, Any, FrameType], None]) -> Callable[[], None]:
    """Call ``listener(held, lock, frame)`` when a thread holding the tracked lock ``held``
    acquires ``lock`` (blocking, no timeout), of a class not in ``held.lock_class.after`` yet
    (``frame``: the acquiring code's). Recording the edge there is the listener's job (the
    lock-order checker does); until one does, the edge is new each time.

    Returns a function that removes the listener (calling it again does nothing). The newest
    listener is called first. Raises ``TypeError`` when ``listener`` is not callable.
    """
    return _edge_listeners.add(listener)


def is_waiting(ident: int) -> bool:
    """Whether the thread ``ident`` is in a tracked wait (an acquire or a join) right now."""
    return ident in _waits


def abort_pending(ident: int) -> bool:
    """Whether an abort request (:func:`request_abort`) for ``ident`` is not delivered yet."""
    return ident in _aborts


def waits() -> dict[int, Wait]:
    """A snapshot of the current waits, by thread ident."""
    with _graph_lock:
        return dict(_waits)


def held_locks(ident: int) -> list[Any]:
    """The tracked locks the thread holds, oldest first (only kept by the lock-order check)."""
    return list(_held.get(ident, ()))


def request_abort(ident: int, exc: BaseException, *, sticky: bool = False) -> None:
    """Make the thread's current tracked wait raise ``exc``.

    Args:
        ident: the thread.
        exc: what to raise.
        sticky: keep the request until delivered (by a later wait, or by whoever calls
            :func:`cancel_abort`) even if the current wait ends without seeing it.
    """
    if not isinstance(exc, BaseException):
        raise TypeError(f"exc must be an exception instance, got {exc!r}")
    _aborts[ident] = exc
    if sticky:
        _sticky.add(ident)
    else:
        _sticky.discard(ident)


def cancel_abort(ident: int) -> BaseException | None:
    """Withdraw an abort request that was not delivered yet; returns it."""
    _sticky.discard(ident)
    return _aborts.pop(ident, None)


def _check_abort(ident: int) -> None:
    exc = _aborts.pop(ident, None)
    if exc is not None:
        _sticky.discard(ident)
        raise exc


def _drop_abort(ident: int) -> None:
    # An abort is for the current wait only (unless sticky): never let it hit a later one.
    if ident not in _sticky:
        _aborts.pop(ident, None)


def _push_held(lock: Any, ident: int, frame: FrameType, ordered: bool) -> None:
    """Add ``lock`` to the thread's held locks; with ``ordered``, look for new edges first.

    Internal locks (:attr:`LockClass.internal`) are never added: they form no edges."""
    if lock._class.internal:
        return
    try:
        held = _held[ident]
    except KeyError:
        held = _held[ident] = []
    if ordered and held:
        _check_edges(lock, held, frame)
    held.append(lock)
    lock._held = held
    lock._hid = ident


def _check_edges(lock: Any, held: list[Any], frame: FrameType) -> None:
    cls = lock._class
    for other in list(held):  # a copy: the hook may take (tracked) locks
        if cls not in other._after and other._class is not cls:
            _new_edge(other, lock, frame)


def _new_edge(held: Any, lock: Any, frame: FrameType) -> None:
    for listener in _edge_listeners.current:
        listener(held, lock, frame)


def _check_order(lock: Any, ident: int, frame: FrameType) -> None:
    held = _held.get(ident)
    if held:
        _check_edges(lock, held, frame)


def _pop_held(lock: Any) -> None:
    """Take ``lock`` off the held locks of the thread that acquired it (the caller may be
    another thread: one atomic ``remove``)."""
    held = lock._held
    if held is _NOT_HELD:  # never added (an internal lock, or the check was off)
        return
    try:
        held.remove(lock)
    except ValueError:  # acquired while the check was off
        pass


def _validate(blocking: Any, timeout: Any) -> tuple[bool, float]:
    """Check ``acquire``'s arguments exactly as this Python's own locks do (types, NaN,
    negative, too large, a timeout for a non-blocking call), and normalise them.

    A fresh, free C lock parses them: it raises what a plain lock raises and, being free,
    never blocks (a shared one could be taken by another thread validating at the moment).
    """
    probe = _allocate()
    probe.acquire(blocking, timeout)
    probe.release()
    return bool(blocking), float(timeout)


def _take(q: SimpleQueue[bool], seconds: float | None) -> bool:
    """Take a lock's token: at once (``seconds=None``) or waiting up to ``seconds``."""
    try:
        if seconds is None:
            q.get_nowait()
        else:
            q.get(True, seconds)
    except Empty:
        return False
    return True


def _wait_for(lock: Any, timeout: float, frame: FrameType, abortable: bool = True) -> bool:
    """Block until the lock's token is taken (True) or ``timeout`` passed (False)."""
    me = _get_ident()
    timed = timeout != -1
    deadline = monotonic() + timeout if timed else 0.0
    wait = Wait(threading.current_thread(), lock, timed, Site.of_frame(frame))
    q = lock._q
    got = False
    if _order and not timed:
        # Record the order before blocking: a deadlocked acquire never completes.
        _check_order(lock, me, frame)
    with _graph_lock:
        _waits[me] = wait
    try:
        listeners = _block_listeners.current
        if listeners and not timed:
            for listener in listeners:
                listener(me)
        while True:
            if abortable:
                _check_abort(me)
            if timed:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    got = _take(q, None)
                    return got
                got = _take(q, min(remaining, WAIT_SLICE))
            else:
                got = _take(q, WAIT_SLICE)
            if got:
                return True
    except BaseException:
        if got:
            q.put_nowait(True)
        raise
    finally:
        with _graph_lock:
            if _waits.get(me) is wait:
                del _waits[me]
        _drop_abort(me)


def _new_token_queue() -> SimpleQueue[bool]:
    q: SimpleQueue[bool] = SimpleQueue()
    q.put_nowait(True)
    return q


def _release_unlocked() -> RuntimeError:
    return RuntimeError("release unlocked lock")


class TrackedLock:
    """A ``threading.Lock`` that knows its class, its owner and where it was acquired.

    Like a plain lock it may be released by a thread that does not hold it.
    """

    # The lock itself is a SimpleQueue holding one token while the lock is free: its
    # get_nowait()/put_nowait() cost about half of a C lock's acquire(False)/release() (no
    # argument parsing, no OS-level lock when nobody waits), and this is the hot path.
    __slots__ = (
        "__weakref__",
        "_after",
        "_class",
        "_code",
        "_held",
        "_hid",
        "_lasti",
        "_owner",
        "_q",
    )

    def __init__(self, lock_class: LockClass) -> None:
        self._q = _new_token_queue()
        self._class = lock_class
        self._after = lock_class.after  # the class's edges, one attribute load closer
        self._owner: int | None = None
        self._code: CodeType | None = None
        self._lasti = 0
        self._held = _NOT_HELD  # the held locks it was last added to (lock-order check)
        self._hid = 0

    @property
    def lock_class(self) -> LockClass:
        return self._class

    @property
    def owner(self) -> int | None:
        """The ident of the thread that acquired the lock, or ``None``."""
        return self._owner

    def acquired_at(self) -> Site | None:
        """Where the current owner acquired the lock."""
        code = self._code
        return None if code is None or self._owner is None else Site.of(code, self._lasti)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if timeout != -1 or (blocking is not True and blocking is not False):
            blocking, timeout = _validate(blocking, timeout)
        try:
            self._q.get_nowait()
        except Empty:
            if not blocking:
                return False
            raw = _getframe(1)
            # Condition._acquire_restore on a plain lock must not be aborted: Condition.wait's
            # caller would then release a lock it does not hold (another thread's).
            f = _user_frame(raw)
            if not _wait_for(self, timeout, f, raw.f_code is not _COND_RESTORE_CODE):
                return False
        else:
            f = _getframe(1)
            if f.f_code.co_filename in _LIB_FILES:
                f = _user_frame(f)
        me = self._owner = _get_ident()
        self._code = f.f_code
        self._lasti = f.f_lasti
        if _order:
            _push_held(self, me, f, blocking and timeout == -1)
        return True

    # The hot path, `with lock:`, has two versions: the class uses the second pair while the
    # lock-order check is on (see _set_order), so that neither looks at a mode flag.

    def _enter(self) -> bool:
        try:
            self._q.get_nowait()
        except Empty:
            f = _user_frame(_getframe(1))
            _wait_for(self, -1, f)
            code = f.f_code
        else:
            f = _getframe(1)
            code = f.f_code
            # The same site as last time is a user frame (only those are stored): no check.
            if code is not self._code and code.co_filename in _LIB_FILES:
                f = _user_frame(f)
                code = f.f_code
        self._owner = _get_ident()
        self._code = code
        self._lasti = f.f_lasti
        return True

    def _exit(self, exc_type: object, exc: object, tb: object) -> None:
        if self._owner is None:
            self.release()  # another thread released it meanwhile: raise as a lock does
            return
        self._owner = None
        self._q.put_nowait(True)

    def _enter_ordered(self) -> bool:
        try:
            self._q.get_nowait()
        except Empty:
            f = _user_frame(_getframe(1))
            _wait_for(self, -1, f)
            code = f.f_code
        else:
            f = _getframe(1)
            code = f.f_code
            if code is not self._code and code.co_filename in _LIB_FILES:
                f = _user_frame(f)
                code = f.f_code
        me = self._owner = _get_ident()
        self._code = code
        self._lasti = f.f_lasti
        # _push_held, inlined; the thread's held list is looked up only when another thread
        # than the last one takes the lock (_held's lists are never replaced, only emptied).
        if self._hid == me:
            held = self._held
        else:
            try:
                held = _held[me]
            except KeyError:
                held = _held[me] = []
            self._held = held
            self._hid = me
        if held:
            # The last lock taken first (without a loop: one held lock is the common case).
            cls = self._class
            other = held[-1]
            if cls not in other._after and other._class is not cls:
                _check_edges(self, held, f)
            elif held[0] is not other:  # more than one held (a lock is held once)
                for other in held:
                    if cls not in other._after and other._class is not cls:
                        _check_edges(self, held, f)
                        break
        held.append(self)
        return True

    def _exit_ordered(self, exc_type: object, exc: object, tb: object) -> None:
        if self._owner is None:
            self.release()
            return
        self._owner = None
        held = self._held
        try:
            if held[-1] is self:
                del held[-1]
            else:
                _pop_held(self)
        except IndexError:  # acquired while the check was off
            pass
        self._q.put_nowait(True)

    __enter__ = _enter
    __exit__ = _exit

    def release(self) -> None:
        owner = self._owner
        q = self._q
        if owner is None:
            if not q.empty():
                raise _release_unlocked()
        else:
            self._owner = None
            if _order:
                _pop_held(self)
        q.put_nowait(True)
        if q.qsize() > 1:  # released twice at the same time by two threads
            q.get_nowait()
            raise _release_unlocked()

    def locked(self) -> bool:
        return self._q.empty()

    def _at_fork_reinit(self) -> None:
        if self._owner is not None:
            _pop_held(self)
        self._q = _new_token_queue()
        self._owner = None

    def __repr__(self) -> str:
        state = "locked" if self._q.empty() else "unlocked"
        return f"<tracked {state} Lock ({self._class.describe()}) at {id(self):#x}>"


class _InternalLock(TrackedLock):
    """A tracked lock of an internal class (:attr:`LockClass.internal`): its ``with`` path
    never keeps lock-order state, whatever the mode."""

    __slots__ = ()

    __enter__ = TrackedLock._enter
    __exit__ = TrackedLock._exit


class TrackedRLock:
    """A ``threading.RLock`` that knows its class, its owner and where it was acquired.

    Re-entry only counts; it is not a new acquisition.
    """

    __slots__ = (
        "__weakref__",
        "_after",
        "_class",
        "_code",
        "_count",
        "_held",
        "_hid",
        "_lasti",
        "_owner",
        "_q",
    )

    def __init__(self, lock_class: LockClass) -> None:
        self._q = _new_token_queue()  # free while it holds its one token (see TrackedLock)
        self._class = lock_class
        self._after = lock_class.after
        self._owner: int | None = None
        self._count = 0
        self._code: CodeType | None = None
        self._lasti = 0
        self._held = _NOT_HELD
        self._hid = 0

    @property
    def lock_class(self) -> LockClass:
        return self._class

    @property
    def owner(self) -> int | None:
        return self._owner

    def acquired_at(self) -> Site | None:
        code = self._code
        return None if code is None or self._owner is None else Site.of(code, self._lasti)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if timeout != -1 or (blocking is not True and blocking is not False):
            blocking, timeout = _validate(blocking, timeout)  # even on re-entry, as RLock does
        me = _get_ident()
        if self._owner == me:
            self._count += 1
            return True
        try:
            self._q.get_nowait()
        except Empty:
            if not blocking:
                return False
            f = _user_frame(_getframe(1))
            if not _wait_for(self, timeout, f):
                return False
        else:
            f = _getframe(1)
            if f.f_code.co_filename in _LIB_FILES:
                f = _user_frame(f)
        self._owner = me
        self._count = 1
        self._code = f.f_code
        self._lasti = f.f_lasti
        if _order:
            _push_held(self, me, f, blocking and timeout == -1)
        return True

    def __enter__(self) -> bool:
        me = _get_ident()
        if self._owner == me:
            self._count += 1
            return True
        f = _getframe(1)
        if f.f_code.co_filename in _LIB_FILES:
            f = _user_frame(f)
        try:
            self._q.get_nowait()
        except Empty:
            _wait_for(self, -1, f)
        self._owner = me
        self._count = 1
        self._code = f.f_code
        self._lasti = f.f_lasti
        if _order:
            _push_held(self, me, f, True)
        return True

    def release(self) -> None:
        if self._owner != _get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        count = self._count - 1
        if count:
            self._count = count
            return
        self._count = 0
        self._owner = None
        if _order:
            _pop_held(self)
        self._q.put_nowait(True)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()

    def locked(self) -> bool:
        return self._q.empty()

    # The private protocol threading.Condition uses when its lock provides it.
    def _is_owned(self) -> bool:
        return self._owner == _get_ident()

    def _recursion_count(self) -> int:
        return self._count if self._owner == _get_ident() else 0

    def _release_save(self) -> tuple[int, int]:
        me = _get_ident()
        if self._owner != me:
            raise RuntimeError("cannot release un-acquired lock")
        state = (self._count, me)
        self._count = 0
        self._owner = None
        if _order:
            _pop_held(self)
        self._q.put_nowait(True)
        return state

    def _acquire_restore(self, state: tuple[int, int]) -> None:
        f = _user_frame(_getframe(1))
        try:
            self._q.get_nowait()
        except Empty:
            # Not abortable: Condition.wait's caller would then release a lock it lacks.
            _wait_for(self, -1, f, abortable=False)
        self._count, self._owner = state
        self._code = f.f_code
        self._lasti = f.f_lasti
        if _order:
            _push_held(self, state[1], f, True)

    def _at_fork_reinit(self) -> None:
        if self._owner is not None:
            _pop_held(self)
        self._q = _new_token_queue()
        self._owner = None
        self._count = 0

    def __repr__(self) -> str:
        owner = self._owner
        state = f"owner={owner} count={self._count}" if owner is not None else "unlocked"
        return f"<tracked RLock {state} ({self._class.describe()}) at {id(self):#x}>"


def _make_lock() -> Any:
    cls = _class_for_creator("Lock", 2)
    if cls is None:
        return _allocate()
    return _InternalLock(cls) if cls.internal else TrackedLock(cls)


class _LockStandInMeta(type):
    """``threading.Lock()`` makes a tracked lock; plain and tracked locks are its instances."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return _ORIG_LOCK(*args, **kwargs)  # the original's error
        lock_class = _class_for_creator("Lock", 2)
        if lock_class is None:
            return _allocate()
        return _InternalLock(lock_class) if lock_class.internal else TrackedLock(lock_class)

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, (_thread.LockType, TrackedLock))

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, (_thread.LockType, TrackedLock))


class _LockStandIn(metaclass=_LockStandInMeta):
    """What ``threading.Lock`` is while tracking is installed on Python 3.13+.

    There ``threading.Lock`` is a class (``_thread.lock``), not a factory function, so code
    may rely on ``isinstance(x, threading.Lock)``; a function in its place would make that
    raise ``TypeError``. Like ``_thread.lock`` it cannot be subclassed.
    """

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError(
            "type '_thread.lock' is not an acceptable base type "
            "(threading.Lock, while pytest-netthreads tracks locks)"
        )


# Python 3.13 made threading.Lock the lock type itself; before, it is a factory function.
_LOCK_STAND_IN: Any = _LockStandIn if isinstance(_ORIG_LOCK, type) else _make_lock


def _make_rlock(*args: Any, **kwargs: Any) -> Any:
    cls = _class_for_creator("RLock", 2)
    if cls is None or args or kwargs:
        return _ORIG_RLOCK(*args, **kwargs)
    return TrackedRLock(cls)


def _tracked_join(self: threading.Thread, timeout: float | None = None) -> None:
    # Let the original do the argument and state checks (and the common quick cases).
    if timeout is not None and timeout <= WAIT_SLICE:
        _ORIG_JOIN(self, timeout)
        return
    _ORIG_JOIN(self, 0)
    if not self.is_alive():
        return
    me = _get_ident()
    frame = _user_frame(_getframe(1))
    timed = timeout is not None
    deadline = monotonic() + timeout if timeout is not None else 0.0
    wait = Wait(threading.current_thread(), self, timed, Site.of_frame(frame))
    with _graph_lock:
        _waits[me] = wait
    try:
        listeners = _block_listeners.current
        if listeners and not timed:
            for listener in listeners:
                listener(me)
        while self.is_alive():
            _check_abort(me)
            if timed:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    return
                _ORIG_JOIN(self, min(remaining, WAIT_SLICE))
            else:
                _ORIG_JOIN(self, WAIT_SLICE)
        _check_abort(me)  # the thread may have ended because of the abort that is for us
    finally:
        with _graph_lock:
            if _waits.get(me) is wait:
                del _waits[me]
        _drop_abort(me)


def _check_flags(deadlock: object, lock_order: object) -> None:
    for name, value in (("deadlock", deadlock), ("lock_order", lock_order)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")


def install(*, deadlock: bool = True, lock_order: bool = False) -> None:
    """Start tracking (nestable: each call needs one :func:`uninstall` with the same flags).

    Args:
        deadlock: wait-for bookkeeping is wanted (owners, waits, ``Thread.join``).
        lock_order: lock-order bookkeeping is wanted too (each thread's held locks).
    """
    global _depth, _order_users
    _check_flags(deadlock, lock_order)
    with _install_lock:
        if _depth == 0:
            by = "pytest-netthreads lock tracking"
            # Appended: one a conflict kept (see uninstall) is tried again after these.
            _patches.extend(
                [
                    patch(threading, "Lock", _LOCK_STAND_IN, by=by),
                    patch(threading, "RLock", _make_rlock, by=by),
                    patch(threading.Thread, "join", _tracked_join, by=by),
                ]
            )
        _depth += 1
        if lock_order:
            _order_users += 1
            _set_order(True)


def uninstall(*, deadlock: bool = True, lock_order: bool = False) -> None:
    """Undo one :func:`install`; the last one restores ``threading``.

    Raises :class:`~pytest_netthreads._runtime.patching.PatchConflict` (a ``RuntimeError``)
    when the last one finds ``threading.Lock``, ``RLock`` or ``Thread.join`` replaced by
    someone else since :func:`install`: their value is left in place (the rest is restored),
    and the next last ``uninstall`` tries again.
    """
    global _depth, _order_users
    _check_flags(deadlock, lock_order)
    with _install_lock:
        if _depth == 0:
            raise RuntimeError("lock tracking is not installed")
        if lock_order:
            _order_users -= 1
            if _order_users == 0:
                _set_order(False)
                for held in _held.values():  # emptied, not dropped: locks keep references
                    held.clear()
                for lock_class in _classes.values():
                    lock_class.after.clear()
        _depth -= 1
        if _depth == 0:
            undo_all(_patches)


def _set_order(on: bool) -> None:
    global _order
    _order = on
    if on:
        TrackedLock.__enter__ = TrackedLock._enter_ordered
        TrackedLock.__exit__ = TrackedLock._exit_ordered
    else:
        TrackedLock.__enter__ = TrackedLock._enter
        TrackedLock.__exit__ = TrackedLock._exit


def _after_fork_in_child() -> None:
    """Reset the tracking state in a forked child, where only the forking thread lives on.

    Another thread may have held one of the module's internal locks at the fork (a wait being
    recorded, say): they are replaced, as ``threading`` replaces its own (the handlers that
    ran before this one, ``threading``'s among them, need none of them).
    The other threads' waits, abort requests and held locks are forgotten (the held lists are
    emptied, not dropped: locks keep references to them, and a new thread of the child may get
    a dead thread's ident). Tracked locks that another thread held stay locked, as plain locks
    do in a forked child.
    """
    global _install_lock, _graph_lock
    _install_lock = _allocate()
    _graph_lock = _allocate()
    me = _get_ident()
    for ident in [i for i in _waits if i != me]:
        del _waits[ident]
    for ident in [i for i in _aborts if i != me]:
        del _aborts[ident]
    _sticky.intersection_update((me,))
    for ident, held in _held.items():
        if ident != me:
            held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def installed() -> bool:
    """Whether lock tracking is installed."""
    return _depth > 0


@contextmanager
def tracking(*, deadlock: bool = True, lock_order: bool = False) -> Iterator[None]:
    """``with tracking(): ...`` installs lock tracking for the block."""
    install(deadlock=deadlock, lock_order=lock_order)
    try:
        yield
    finally:
        uninstall(deadlock=deadlock, lock_order=lock_order)


def describe_target(target: Any) -> str:
    """One line about what a wait is for."""
    if isinstance(target, threading.Thread):
        return f"thread {target.name!r} to finish (Thread.join)"
    if isinstance(target, (TrackedLock, TrackedRLock)):
        return target.lock_class.describe()
    return repr(target)
