"""The thread-leak checker: which threads were started by whom, and which are still running.

:class:`ThreadLeakChecker` patches :meth:`threading.Thread.start` while it runs (through
``_runtime/patching.py``, which restores only what is still its own) and records, for every
thread started, its *owner* (any hashable object: the plugin uses one per test and
one per higher-scoped fixture), the ``file:line`` where it was started and the start stack.
:meth:`ThreadLeakChecker.check` then joins the threads an owner started, for up to a grace
period (no sleeping: a run without leaks pays nothing), and returns those still alive::

    from pytest_netthreads.detect.threadleak import ThreadLeakChecker

    with ThreadLeakChecker(grace=1.0):  # raises ThreadLeakError on exit if a thread leaked
        run_the_code_under_test()

Who owns a new thread:

1. threads of the kit itself (``pytest_netthreads._runtime.threads.is_internal``) are never
   tracked;
2. a thread whose target belongs to a :class:`concurrent.futures.ThreadPoolExecutor` (whose
   ``__init__`` is patched too) or a :class:`~pytest_netthreads.ThreadedServer` (which
   announces its creation through ``_runtime.threads.note_created``) belongs to whoever
   created that object (so a pool made by a module-scoped fixture does not blame the test
   that first submitted work);
3. a thread started by a tracked thread belongs to that thread's owner;
4. a thread started by the thread that drives the checker belongs to the current owner;
5. anything else (threads started by threads that existed before the checker) is untracked.

Threads started without a :class:`threading.Thread`, with ``_thread.start_new_thread`` (and
``_thread.start_joinable_thread`` where it exists), are recorded too, by rules 3 to 5; they
have no name, so they are reported as ``<_thread IDENT>``.

With ``sockets=True`` it also records the sockets each owner creates (see ``socketleak.py``);
with ``collected=True`` too, the sockets that are garbage-collected while still open.
"""

from __future__ import annotations

import _thread
import concurrent.futures
import functools
import re
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._runtime import values
from .._runtime.patching import Patch, patch, undo_all
from .._runtime.stacks import (
    Frame,
    format_frames,
    format_thread_stack,
    started_by,
    walk,
    where,
)
from .._runtime.stacks import capture as capture_stack
from .._runtime.threads import add_creation_listener, is_internal
from .socketleak import (
    LeakedSocket,
    SocketRecord,
    collected_leak,
    describe_socket,
    find_leaked_sockets,
    format_socket_leaks,
    still_open,
)

if TYPE_CHECKING:
    from typing_extensions import Self

# Kept importable from here (they moved to the runtime layer's stacks module).
format_stack = format_frames
"""Format captured frames like a traceback (most recent call last):
:func:`pytest_netthreads._runtime.stacks.format_frames`."""


def _target_name(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    if target is None:
        cls = type(thread)
        if cls.run is not threading.Thread.run:
            return f"{cls.__module__}.{cls.__qualname__}.run"
        return "(none)"
    if isinstance(target, functools.partial):
        target = target.func
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or repr(target)
    return f"{module}.{qualname}" if module else str(qualname)


@dataclass(eq=False)
class _Started:
    """One started thread, held weakly: what a report needs is captured at its start.

    A thread still running is kept alive by ``threading`` itself, so a weak reference loses
    nothing there; a finished one must stay collectable (a library's ``Thread`` subclass may
    be its connection object, whose own tests expect it to be collected once closed).
    """

    ref: weakref.ref[threading.Thread]
    owner: Hashable
    target: str
    frames: tuple[Frame, ...]


@dataclass(eq=False)
class _RawStarted:
    """One thread started with ``_thread`` (no ``Thread`` object): ``done`` is held until
    its function returns, so that checking it is a timed acquire."""

    owner: Hashable
    target: str
    frames: tuple[Frame, ...]
    done: Any = dataclass_field(default_factory=_thread.allocate_lock)
    ident: int | None = None

    def finished(self, timeout: float = 0.0) -> bool:
        """Whether its function returned, waiting up to ``timeout`` seconds for it."""
        if self.done.acquire(timeout > 0, timeout if timeout > 0 else -1):
            self.done.release()
            return True
        return False


def _raw_name(ident: int | None) -> str:
    return f"<_thread {ident}>"


@dataclass(frozen=True)
class LeakedThread:
    """A thread an owner started that was still alive when the owner was checked.

    Attributes:
        thread: the thread itself (``None`` for one started with ``_thread``).
        name: its name at check time (``<_thread IDENT>`` for one started with ``_thread``).
        daemon: whether it is a daemon thread.
        target: the qualified name of its target (or of its ``run`` method).
        owner: the owner's label (the test's node id, for instance).
        started_at: ``file:line in function`` of the code that started it.
        start_stack: the stack that started it, formatted (most recent call last).
        current_stack: its stack at check time, formatted.
        started_by: ``path:line in function`` (relative to the checker's ``root``) of the
            outermost frame of the start stack inside ``root`` (the test or fixture that led
            to the start), when it is not the frame ``started_at`` names; else ``None``.
    """

    thread: threading.Thread | None
    name: str
    daemon: bool
    target: str
    owner: str
    started_at: str
    start_stack: str
    current_stack: str
    started_by: str | None = None

    def format(self) -> str:
        kind = "daemon" if self.daemon else "non-daemon"
        if self.thread is None:
            kind = "started with _thread, no Thread object"
        by = f"started by {self.started_by}\n" if self.started_by else ""
        return (
            f"--- thread {self.name!r} ({kind}), target {self.target}\n"
            f"started at {self.started_at}\n{by}"
            f"start stack (most recent call last):\n{self.start_stack}"
            f"current stack (most recent call last):\n{self.current_stack}"
        )

    def format_brief(self, shown_for: str) -> str:
        """Its headline and start site, referring to the full report of a leak like it
        (same target, same start site) made for ``shown_for``."""
        full = self.format()
        head = full[: full.index("start stack (most recent call last):")]
        return f"{head}(stacks as in the report for {shown_for}: same target and start site)"

    def same_as(self) -> tuple[str, str, str | None]:
        """What leaks alike share: target, start site, and the user's frame that led there."""
        return (self.target, self.started_at, self.started_by)


def format_thread_leaks(
    owner: str,
    leaks: list[LeakedThread],
    grace: float,
    *,
    shown_for: Sequence[str | None] = (),
) -> str:
    """The report for ``leaks``: a headline naming ``owner``, then each thread.

    ``shown_for[i]``, when given and not ``None``, names the owner whose report already
    showed a leak like ``leaks[i]`` (same target, same start site) in full: that one is
    reported in three lines, without its stacks (a fixture leaking in each of 50 tests
    makes one full report, not 50).
    """
    head = f"{len(leaks)} thread(s) started by {owner} still running {grace:g}s after its teardown:"
    parts = [head]
    for i, leak in enumerate(leaks):
        first = shown_for[i] if i < len(shown_for) else None
        parts.append(leak.format() if first is None else leak.format_brief(first))
    return "\n".join(parts)


class ThreadLeakError(AssertionError):
    """Raised by :meth:`ThreadLeakChecker.__exit__` when threads (or sockets) leaked.

    Attributes:
        threads: the leaked threads.
        sockets: the leaked sockets (with ``sockets=True``).
    """

    def __init__(
        self, message: str, threads: list[LeakedThread], sockets: list[LeakedSocket]
    ) -> None:
        super().__init__(message)
        self.threads = threads
        self.sockets = sockets


def compile_patterns(patterns: Iterable[str], what: str) -> list[re.Pattern[str]]:
    """Compile regexes, raising ``ValueError`` naming ``what`` for a bad one."""
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{what} must be regular expressions (str), got {pattern!r}")
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(
                f"{what}: {pattern!r} is not a valid regular expression ({exc})"
            ) from None
    return compiled


IDLE_WORKER_CACHES: tuple[tuple[str, str], ...] = (
    # trio (trio._core._thread_cache): trio.to_thread.run_sync and trio's own blocking calls
    # (getaddrinfo, file I/O) run in a process-wide cache of worker threads, each named
    # "Trio thread N" and kept, idle, for 10 seconds (IDLE_TIMEOUT) after its job for the
    # next one. One left idle after a test is no leak: the next test reuses it, and it exits
    # on its own. While it runs a job it carries the job's name, so a worker stuck in a
    # test's job is still reported.
    (r"^Trio thread \d+$", "trio's idle worker thread cache (trio._core._thread_cache)"),
)
"""Threads that libraries keep on purpose, idle, between uses, as ``(name regex, why)``.

The plugin ignores them by default (ini ``thread_leak_default_ignore = false`` turns that
off); :class:`ThreadLeakChecker` does not, unless given them in ``ignore``.
"""

MAX_GRACE = threading.TIMEOUT_MAX
"""The longest grace (seconds): what ``Thread.join`` accepts as a timeout."""


def validate_grace(grace: object, what: str = "grace") -> float:
    """``grace`` as a float of seconds in ``[0, MAX_GRACE]``.

    Raises ``TypeError`` (naming ``what``) for anything but an ``int`` or ``float`` (``bool``
    included) and ``ValueError`` for NaN, a negative value, infinity or more than
    :data:`MAX_GRACE` (``Thread.join`` would raise ``OverflowError`` at the check).
    """
    return values.seconds(grace, what, maximum=MAX_GRACE)


def _validate_allow(allow: object) -> list[re.Pattern[str]]:
    if isinstance(allow, (str, bytes)) or not isinstance(allow, Iterable):
        raise TypeError(f"allow must be compiled regexes (re.Pattern), got {allow!r}")
    patterns: list[re.Pattern[str]] = []
    for pattern in allow:
        if not isinstance(pattern, re.Pattern):
            raise TypeError(f"allow must be compiled regexes (re.Pattern), got {pattern!r}")
        patterns.append(pattern)
    return patterns


class ThreadLeakChecker:
    """Records who started each thread (and socket) and finds those left running.

    Threads and sockets are held weakly: the checker never keeps one alive. A thread that
    finished and that nobody references is collected as without the checker (and was not a
    leak); a running one is kept alive by ``threading`` itself. A socket nobody references is
    collected and closed by its finalizer (with Python's ``ResourceWarning``), as without the
    checker, and is not open any more when its owner is checked.

    Args:
        grace: seconds :meth:`check` waits (joining, not sleeping) for an owner's threads to
            finish before it calls them leaked: an ``int`` or ``float`` from 0 to
            :data:`MAX_GRACE`. Default 1.0.
        ignore: regular expressions; threads whose name matches one (``re.search``) are never
            reported.
        sockets: also record the sockets each owner creates (see :meth:`check_sockets`).
        collected: with ``sockets``, also report the sockets an owner created that were
            garbage-collected while still open (Python closes those itself, with a
            ``ResourceWarning`` that does not say where they were created). The warning
            is still raised as without the checker.

    Raises:
        TypeError: ``grace`` is not a number (or is a ``bool``), ``sockets`` or
            ``collected`` is not a ``bool``, ``ignore`` is a ``str`` or holds something
            else than ``str``.
        ValueError: ``grace`` is NaN, negative, infinite or above :data:`MAX_GRACE`; a
            pattern in ``ignore`` does not compile; ``collected`` without ``sockets``.
    """

    def __init__(
        self,
        *,
        grace: float = 1.0,
        ignore: Iterable[str] = (),
        sockets: bool = False,
        collected: bool = False,
    ) -> None:
        self.grace = grace
        if isinstance(ignore, str):
            raise TypeError(f"ignore must be an iterable of regexes, got the str {ignore!r}")
        self.ignore = compile_patterns(ignore, "ignore")
        if not isinstance(sockets, bool):
            raise TypeError(f"sockets must be True or False, got {sockets!r}")
        self.sockets = sockets
        if not isinstance(collected, bool):
            raise TypeError(f"collected must be True or False, got {collected!r}")
        if collected and not sockets:
            raise ValueError("collected=True needs sockets=True (it reports recorded sockets)")
        self.collected = collected
        # id() of a live recorded socket -> its record (collected=True): found in its
        # finalizer, when a weak reference to it may already be cleared (cyclic garbage).
        self._by_id: dict[int, SocketRecord] = {}
        # owner -> (record, description) of its sockets collected while open
        self._collected: dict[Hashable, list[tuple[SocketRecord, str]]] = {}
        self._lock = threading.Lock()
        self._owner: Hashable | None = None
        self._driver: threading.Thread | None = None
        # thread -> its owner (not the record: a value referring to its key would keep it)
        self._started: weakref.WeakKeyDictionary[threading.Thread, Hashable] = (
            weakref.WeakKeyDictionary()
        )
        self._objects: weakref.WeakKeyDictionary[Any, Hashable] = weakref.WeakKeyDictionary()
        self._owned: dict[Hashable, list[_Started]] = {}
        self._sockets: dict[Hashable, list[SocketRecord]] = {}
        self._raw: dict[Hashable, list[_RawStarted]] = {}
        self._raw_running: dict[int, Hashable] = {}  # ident of a running raw thread -> owner
        self._patches: list[Patch] = []
        self._remove_listener: Callable[[], None] | None = None
        self._running = False
        self._default_owner = f"{type(self).__name__}@{id(self):#x}"
        self._previous: Hashable | None = None
        self.root: str | None = None
        """The user's directory (the plugin sets pytest's rootdir): a report names the
        outermost frame inside it that led to a leak ("started by ..."); ``None``: not."""

    @property
    def grace(self) -> float:
        """The default grace of :meth:`check` (seconds); validated when set."""
        return self._grace

    @grace.setter
    def grace(self, grace: float) -> None:
        self._grace = validate_grace(grace)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Patch ``Thread.start`` and ``ThreadPoolExecutor.__init__`` (and ``socket.__init__``
        with ``sockets=True``), and listen for the kit's servers being created.

        Threads alive now are never reported. Raises ``RuntimeError`` when already started.
        """
        if self._running:
            raise RuntimeError("this ThreadLeakChecker is already started")
        self._running = True
        self._driver = threading.current_thread()
        self._patch(threading.Thread, "start", self._wrap_start)
        self._patch(concurrent.futures.ThreadPoolExecutor, "__init__", self._wrap_init)
        # A ThreadedServer announces itself (it starts its threads later, from the reactor).
        self._remove_listener = add_creation_listener(self._note_creator)
        for name in _RAW_STARTS:
            if hasattr(_thread, name):
                make = self._wrap_joinable if name == "start_joinable_thread" else self._wrap_raw
                self._patch(_thread, name, make)
        if self.sockets:
            self._patch(socket.socket, "__init__", self._wrap_socket_init)
        if self.collected:
            # socket.socket has no __del__ of its own: the C finalizer it inherits warns and
            # closes; this one looks first, then calls it (same warning, same close).
            self._patch(socket.socket, "__del__", self._wrap_socket_del)
        return self

    def stop(self) -> None:
        """Restore what :meth:`start` patched. Records already made stay checkable.

        Raises :class:`~pytest_netthreads._runtime.patching.PatchConflict` (a
        ``RuntimeError``) when one of those attributes was replaced after :meth:`start` by
        someone else, whose value is then left in place (everything else is restored); stop
        the checker before undoing patches made after its start.
        """
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        self._running = False
        undo_all(self._patches)  # a conflict stays in the list: a later stop() tries again
        self._by_id.clear()  # ids of sockets that die unwatched may be reused

    def __enter__(self) -> Self:
        self.start()
        self._previous = self.set_owner(self._default_owner)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.set_owner(self._previous)
        try:
            # With an exception already on its way, do not wait: it is reported, not this.
            threads, socks = self.check_all(self._default_owner, grace=0 if exc_type else None)
        finally:
            self.stop()
        if exc_type is None and (threads or socks):
            parts = []
            if threads:
                parts.append(format_thread_leaks("the checked block", threads, self.grace))
            if socks:
                parts.append(format_socket_leaks("the checked block", socks))
            raise ThreadLeakError("\n\n".join(parts), threads, socks)

    def _patch(self, cls: Any, name: str, make: Callable[[Any], Any]) -> None:
        self._patches.append(patch(cls, name, make(getattr(cls, name)), by="ThreadLeakChecker"))

    # -- ownership -----------------------------------------------------------------------

    def set_owner(self, owner: Hashable | None) -> Hashable | None:
        """Make ``owner`` the owner of what the driving thread starts from now on.

        ``None`` means nobody: what is started then is not tracked. Returns the previous one.
        Raises ``TypeError`` for an owner that is not hashable.
        """
        try:
            hash(owner)
        except TypeError:
            raise TypeError(f"owner must be hashable, got {owner!r}") from None
        previous, self._owner = self._owner, owner
        if owner is not None:
            self._driver = threading.current_thread()
        return previous

    @property
    def owner(self) -> Hashable | None:
        return self._owner

    @contextmanager
    def owned_by(self, owner: Hashable | None) -> Iterator[None]:
        """``with checker.owned_by(owner):`` sets the owner for the block, then restores it."""
        previous = self.set_owner(owner)
        try:
            yield
        finally:
            self.set_owner(previous)

    def _caller_owner(self) -> Hashable | None:
        current = threading.current_thread()
        if current is self._driver:
            return self._owner
        owner = self._started.get(current)
        if owner is None and self._raw_running:
            owner = self._raw_running.get(_thread.get_ident())
        return owner

    def _object_owner(self, thread: threading.Thread) -> tuple[bool, Hashable | None]:
        """``(True, owner)`` when the thread's target belongs to an object we saw created."""
        candidates: list[object] = []
        target = getattr(thread, "_target", None)
        bound = getattr(target, "__self__", None)
        if bound is not None:
            candidates.append(bound)
        for arg in tuple(getattr(thread, "_args", ()))[:2]:
            if isinstance(arg, weakref.ref):  # ThreadPoolExecutor workers get a weakref
                candidates.append(arg())
        for obj in candidates:
            try:
                if obj in self._objects:
                    return True, self._objects[obj]
            except Exception:  # not weak-referenceable or not hashable: never recorded
                continue
            if isinstance(obj, concurrent.futures.ThreadPoolExecutor):
                return True, None  # created before the checker started
        return False, None

    def _note_creator(self, obj: object) -> None:
        """Record who created ``obj`` (a pool, a server): its threads will be theirs."""
        owner = self._caller_owner()
        if owner is not None:
            try:
                self._objects[obj] = owner
            except TypeError:  # not weak-referenceable or not hashable
                pass

    def _wrap_init(self, original: Callable[..., None]) -> Callable[..., None]:
        note_creator = self._note_creator

        @functools.wraps(original)
        def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
            note_creator(obj)
            original(obj, *args, **kwargs)

        return __init__

    def _wrap_start(self, original: Callable[[threading.Thread], None]) -> Callable[..., None]:
        checker = self

        @functools.wraps(original)
        def start(thread: threading.Thread) -> None:
            try:
                record = checker._on_start(thread)
            except Exception:  # bookkeeping must never break the code under test
                record = None
            try:
                original(thread)
            except BaseException:
                if record is not None:
                    checker._forget(record)
                raise

        return start

    def _wrap_raw(self, original: Callable[..., int]) -> Callable[..., int]:
        checker = self

        @functools.wraps(original)
        def start_new_thread(function: Any, args: Any, *kwargs: Any) -> int:
            record = checker._on_raw_start(function)
            if record is None:
                return original(function, args, *kwargs)
            try:
                ident = original(checker._raw_body(record, function), args, *kwargs)
            except BaseException:  # a bad argument: original's own error, nothing recorded
                checker._forget_raw(record)
                raise
            record.ident = ident
            return ident

        return start_new_thread

    def _wrap_joinable(self, original: Callable[..., Any]) -> Callable[..., Any]:
        checker = self

        @functools.wraps(original)
        def start_joinable_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
            record = checker._on_raw_start(function)
            if record is None:
                return original(function, *args, **kwargs)
            try:
                handle = original(checker._raw_body(record, function), *args, **kwargs)
            except BaseException:
                checker._forget_raw(record)
                raise
            record.ident = getattr(handle, "ident", None)
            return handle

        return start_joinable_thread

    def _on_raw_start(self, function: object) -> _RawStarted | None:
        """The record of a thread about to be started with ``_thread`` (``None``: not ours to
        track, or ``function`` is not callable and the original raises its own error)."""
        try:
            if not callable(function) or is_internal(threading.current_thread()):
                return None
            owner = self._caller_owner()
            if owner is None:
                return None
            module = getattr(function, "__module__", None)
            qualname = getattr(function, "__qualname__", None) or repr(function)
            target = f"{module}.{qualname}" if module else str(qualname)
            record = _RawStarted(owner, target, capture_stack(sys._getframe(2)))
            record.done.acquire()
            with self._lock:
                owned = self._raw.setdefault(owner, [])
                if len(owned) >= 256 and len(owned) & 255 == 0:
                    owned[:] = [r for r in owned if not r.finished()]  # a long-lived owner
                owned.append(record)
            return record
        except Exception:  # bookkeeping must never break the code under test
            return None

    def _raw_body(self, record: _RawStarted, function: Callable[..., Any]) -> Callable[..., Any]:
        running = self._raw_running

        def body(*args: Any, **kwargs: Any) -> Any:
            ident = _thread.get_ident()
            running[ident] = record.owner  # what it starts is its owner's too
            try:
                return function(*args, **kwargs)
            finally:
                running.pop(ident, None)
                record.done.release()

        return body

    def _forget_raw(self, record: _RawStarted) -> None:
        with self._lock:
            owned = self._raw.get(record.owner)
            if owned is not None and record in owned:
                owned.remove(record)
                if not owned:
                    del self._raw[record.owner]

    def _on_start(self, thread: threading.Thread) -> _Started | None:
        if is_internal(thread):
            return None
        found, owner = self._object_owner(thread)
        if not found:
            current = threading.current_thread()
            owner = None if is_internal(current) else self._caller_owner()
        if owner is None:
            return None
        frames = capture_stack(sys._getframe(2))
        record = _Started(weakref.ref(thread), owner, _target_name(thread), frames)
        with self._lock:
            self._started[thread] = owner
            owned = self._owned.get(owner)
            if owned is None:
                owned = self._owned[owner] = []
            elif len(owned) >= 256 and len(owned) & 255 == 0:
                # A long-lived owner (a session-scoped server, say) starts many short threads.
                owned[:] = [r for r in owned if _unfinished(r.ref())]
            owned.append(record)
        return record

    def _forget(self, record: _Started) -> None:
        with self._lock:
            thread = record.ref()
            if thread is not None:
                self._started.pop(thread, None)
            owned = self._owned.get(record.owner)
            if owned is not None and record in owned:
                owned.remove(record)

    # -- checking ------------------------------------------------------------------------

    def owners(self) -> list[Hashable]:
        """Owners with threads (or sockets) recorded and not checked yet."""
        with self._lock:
            return list(
                dict.fromkeys([*self._owned, *self._raw, *self._sockets, *self._collected])
            )

    def has_records(self, owner: Hashable) -> bool:
        return (
            owner in self._owned
            or owner in self._raw
            or owner in self._sockets
            or owner in self._collected
        )

    def check(
        self,
        owner: Hashable,
        *,
        grace: float | None = None,
        allow: Iterable[re.Pattern[str]] | None = (),
    ) -> list[LeakedThread]:
        """The threads ``owner`` started that are still alive, after joining them up to grace.

        Forgets ``owner``'s threads: a thread is reported once at most. Its sockets are left
        for :meth:`check_sockets` (:meth:`check_all` checks both with one grace period).

        Args:
            owner: the owner to check.
            grace: seconds to wait in total (default: the checker's ``grace``).
            allow: compiled patterns of thread names (``re.search``) not to report; ``None``
                allows every thread.
        """
        grace = self.grace if grace is None else validate_grace(grace)
        patterns = None if allow is None else _validate_allow(allow)
        with self._lock:
            records = self._owned.pop(owner, None)
            raw = self._raw.pop(owner, None) or []
        if not (records or raw) or patterns is None:
            return []
        reported = self._reported(self._live(records or []), patterns)
        raw = self._raw_reported(raw, patterns)
        if not (reported or raw):
            return []
        deadline = time.monotonic() + grace
        _join([thread for _, thread in reported], deadline)
        return [
            *(self._leak(r, thread) for r, thread in reported if thread.is_alive()),
            *self._raw_leaks(raw, deadline),
        ]

    def check_all(
        self,
        owner: Hashable,
        *,
        grace: float | None = None,
        allow: Iterable[re.Pattern[str]] | None = (),
    ) -> tuple[list[LeakedThread], list[LeakedSocket]]:
        """``owner``'s leaked threads and (with ``sockets=True``) sockets, one grace for both.

        What the plugin and the ``with`` block use. First the threads to report are joined up
        to the deadline (``grace`` from now); then, if a socket ``owner`` created is still
        open, ``owner``'s other live threads too (those ``allow`` or ``ignore`` exempt, or
        every thread with ``allow=None``), within the same deadline, since a thread on its way
        out may be what closes it. Forgets ``owner``'s threads and sockets.

        Args: as :meth:`check`. Returns ``(threads, sockets)``.
        """
        grace = self.grace if grace is None else validate_grace(grace)
        patterns = None if allow is None else _validate_allow(allow)
        with self._lock:
            records = self._owned.pop(owner, None) or []
            raw = self._raw.pop(owner, None) or []
            socket_records = self._sockets.pop(owner, None)
        deadline = time.monotonic() + grace
        live = self._live(records)
        reported = [] if patterns is None else self._reported(live, patterns)
        raw_reported = [] if patterns is None else self._raw_reported(raw, patterns)
        if reported:
            _join([thread for _, thread in reported], deadline)
        leaks = [self._leak(r, thread) for r, thread in reported if thread.is_alive()]
        leaks += self._raw_leaks(raw_reported, deadline)
        sockets = []
        if socket_records:
            if still_open(socket_records):
                self._raw_leaks(raw, deadline)  # joins them: one may close a socket
            sockets = self._leaked_sockets(socket_records, [t for _, t in live], deadline)
        # Last: the collection above may have collected some of them unclosed.
        return leaks, sockets + self._take_collected(owner)

    def _live(self, records: list[_Started]) -> list[tuple[_Started, threading.Thread]]:
        """The records whose thread is alive (not the caller's, not the kit's), with it."""
        current = threading.current_thread()
        live = []
        for record in records:
            thread = record.ref()
            if (
                thread is not None
                and thread.is_alive()
                and thread is not current
                and not is_internal(thread)
            ):
                live.append((record, thread))
        return live

    def _reported(
        self, live: list[tuple[_Started, threading.Thread]], allow: list[re.Pattern[str]]
    ) -> list[tuple[_Started, threading.Thread]]:
        patterns = [*self.ignore, *allow]
        return [(r, t) for r, t in live if not any(p.search(t.name) for p in patterns)]

    def _raw_reported(
        self, raw: list[_RawStarted], allow: list[re.Pattern[str]]
    ) -> list[_RawStarted]:
        patterns = [*self.ignore, *allow]
        return [r for r in raw if not any(p.search(_raw_name(r.ident)) for p in patterns)]

    def _raw_leaks(self, raw: list[_RawStarted], deadline: float) -> list[LeakedThread]:
        """The ``_thread`` threads of ``raw`` still running at ``deadline``."""
        leaks = []
        for record in raw:
            if record.finished(max(0.0, deadline - time.monotonic())):
                continue
            ident = record.ident
            frame = sys._current_frames().get(ident) if ident is not None else None
            frames = walk(frame)
            while frames and frames[0][0] == _THIS_FILE:  # the body that runs its function
                del frames[0]
            current = (
                format_frames(frames)
                if frames
                else "    (no stack: the thread is not running)\n"
            )
            leaks.append(
                LeakedThread(
                    thread=None,
                    name=_raw_name(ident),
                    daemon=True,  # the interpreter does not wait for it at exit
                    target=record.target,
                    owner=str(record.owner),
                    started_at=where(record.frames),
                    start_stack=format_frames(record.frames),
                    current_stack=current,
                    started_by=started_by(record.frames, self.root),
                )
            )
        return leaks

    def _leak(self, record: _Started, thread: threading.Thread) -> LeakedThread:
        return LeakedThread(
            thread=thread,
            name=thread.name,
            daemon=thread.daemon,
            target=record.target,
            owner=str(record.owner),
            started_at=where(record.frames),
            start_stack=format_frames(record.frames),
            current_stack=format_thread_stack(thread),
            started_by=started_by(record.frames, self.root),
        )

    # -- sockets -------------------------------------------------------------------------

    def _wrap_socket_init(self, original: Callable[..., None]) -> Callable[..., None]:
        checker = self

        @functools.wraps(original)
        def __init__(sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            original(sock, *args, **kwargs)
            if is_internal(threading.current_thread()):
                return  # a kit server's connection: the server closes it at its stop
            owner = checker._caller_owner()
            if owner is None:
                return
            try:
                ref = weakref.ref(sock)
            except TypeError:  # a subclass with __slots__ and no __weakref__
                return
            record = SocketRecord(ref, owner, capture_stack(sys._getframe(1)))
            if checker.collected:
                checker._by_id[id(sock)] = record
            with checker._lock:
                owned = checker._sockets.get(owner)
                if owned is None:
                    owned = checker._sockets[owner] = []
                elif len(owned) >= 256 and len(owned) & 255 == 0:
                    owned[:] = [r for r in owned if r.open()]
                owned.append(record)

        return __init__

    def _wrap_socket_del(self, original: Callable[[Any], None]) -> Callable[[Any], None]:
        by_id = self._by_id
        collected = self._collected

        @functools.wraps(original)
        def __del__(sock: socket.socket) -> None:
            # No lock here: a finalizer runs wherever a collection starts, maybe in a thread
            # holding the checker's lock. Dict and list operations are atomic.
            record = by_id.pop(id(sock), None)
            if record is not None:
                try:
                    alive = record.ref()
                    if (alive is None or alive is sock) and sock.fileno() != -1:
                        entry = (record, describe_socket(sock))
                        collected.setdefault(record.owner, []).append(entry)
                except Exception:  # bookkeeping must never break a finalizer
                    pass
            # Python's own finalizer: ResourceWarning "unclosed" (as without the check, but
            # raised from this line), then close.
            original(sock)

        return __del__

    def _take_collected(self, owner: Hashable) -> list[LeakedSocket]:
        """The sockets ``owner`` created that were collected while open (forgotten here)."""
        entries = self._collected.pop(owner, None)
        if not entries:
            return []
        return [
            collected_leak(record, description, self.root)
            for record, description in entries
            if not record.kit_owned()
        ]

    def check_sockets(self, owner: Hashable, *, grace: float | None = None) -> list[LeakedSocket]:
        """The sockets ``owner`` created that are still open. Forgets ``owner``'s sockets.

        When one is open, ``owner``'s threads still running and not checked yet are joined
        first, up to ``grace`` (default: the checker's): a thread on its way out may be what
        closes it. Nothing is waited for when every socket is closed.
        """
        grace = self.grace if grace is None else validate_grace(grace)
        with self._lock:
            records = self._sockets.pop(owner, None)
            threads = list(self._owned.get(owner, ()))
        if not records:
            return self._take_collected(owner)
        live = [thread for _, thread in self._live(threads)]
        leaks = self._leaked_sockets(records, live, time.monotonic() + grace)
        return leaks + self._take_collected(owner)

    def _leaked_sockets(
        self, records: list[SocketRecord], threads: list[threading.Thread], deadline: float
    ) -> list[LeakedSocket]:
        candidates = still_open(records)
        if candidates and threads:
            _join(threads, deadline)  # those already joined return at once
            candidates = still_open(candidates)
        return find_leaked_sockets(candidates, self.root)


# The ``_thread`` functions that start a thread without a ``threading.Thread``
# (``start_joinable_thread``, new in 3.13, is what ``Thread.start`` uses, through an alias of
# its own that is not patched). ``start_new``, start_new_thread's deprecated alias, is not.
_THIS_FILE = __file__
_RAW_STARTS = ("start_new_thread", "start_joinable_thread")


def _unfinished(thread: threading.Thread | None) -> bool:
    """Whether ``thread`` is not collected and not finished (running, or being started)."""
    return thread is not None and (thread.is_alive() or not thread.ident)


def _join(threads: list[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


__all__ = [
    "IDLE_WORKER_CACHES",
    "MAX_GRACE",
    "LeakedThread",
    "ThreadLeakChecker",
    "ThreadLeakError",
    "capture_stack",
    "compile_patterns",
    "format_stack",
    "format_thread_leaks",
    "validate_grace",
    "where",
]
