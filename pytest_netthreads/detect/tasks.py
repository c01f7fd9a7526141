"""asyncio for the detectors: the running event loops with their tasks, and tasks left pending.

**Running loops** (:func:`running_loops`, :func:`format_running_loops`): every event loop
running in any thread of the process, found from the threads' stacks (a loop runs inside
``BaseEventLoop.run_forever``, whose frame holds the loop: no patching, nothing paid until a
report is made), with its pending tasks and each task's await chain, tagged with the thread
that runs it. The hang watchdog (:mod:`.deadlock`) adds this section to its report: a stuck
coroutine otherwise shows up only as its loop's ``select()``. The await chain is followed
from the task's coroutine through what each coroutine awaits (``cr_await``), down to the
innermost coroutine; on Python 3.14+ the tasks that await the task are named too
(:func:`asyncio.capture_call_graph`).

**Task leaks** (:class:`TaskLeakChecker`): the tasks an owner (the plugin uses one per test)
created that were still pending when their event loop began closing, or when the owner was
checked. ``asyncio.run`` (and ``asyncio.Runner``, which pytest-asyncio and anyio use)
cancels the tasks still pending when its main coroutine returns, so they never show up as
pending afterwards: the checker notes them at that moment, with their await chain, and
reports them as leaked. Every runner (the standard library's and the copies that
pytest-asyncio and anyio carry for Python 3.10) asks ``asyncio.tasks.all_tasks(loop)`` for
the tasks of its stopped loop to cancel them: the checker wraps that function, and a call
for a loop that is not running marks the loop's pending tasks.
A loop closed by hand (``loop.close()``) with tasks still pending is noted the same way::

    from pytest_netthreads.detect.tasks import TaskLeakChecker

    with TaskLeakChecker() as checker:
        checker.set_owner("my job")
        asyncio.run(main())
        leaks = checker.check("my job")  # LeakedTask records

Which tasks belong to the owner: those created (``loop.create_task``, and so
``asyncio.create_task``, ``ensure_future``, ``TaskGroup``) in the thread that set the owner,
and in any thread on a loop created while the owner was set. Tasks that finish before the
loop closes (done, cancelled, failed) are not leaks, whoever ends them. Loops that are not
``asyncio.BaseEventLoop`` subclasses (uvloop) are not seen.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks
import gc
import sys
import threading
import types
import weakref
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from .._runtime.patching import Patch, patch, undo_all
from .._runtime.stacks import Frame, capture, format_frames, where
from .locks import raw_lock

__all__ = [
    "RUNNER_TASKS",
    "LeakedTask",
    "RunningLoop",
    "TaskLeakChecker",
    "TaskLeakError",
    "await_chain",
    "describe_task",
    "format_await_chain",
    "format_running_loops",
    "format_task_leaks",
    "running_loops",
]

_RUN_FOREVER = asyncio.BaseEventLoop.run_forever.__code__
_MAX_CHAIN = 100  # coroutines followed at most (a cycle in cr_await would be a CPython bug)


@dataclass(frozen=True)
class RunningLoop:
    """An event loop running in a thread.

    Attributes:
        loop: the loop.
        ident: the ident of the thread running it.
        thread: that thread's name (``<thread IDENT>`` for a thread ``threading`` does not
            know).
    """

    loop: asyncio.AbstractEventLoop
    ident: int
    thread: str


def _thread_names() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if t.ident is not None}


def running_loops() -> list[RunningLoop]:
    """Every event loop running now in any thread, found on the threads' stacks.

    Cheap enough for a report (one walk of each thread's stack), never paid before: no loop
    is tracked while it runs.
    """
    names = _thread_names()
    found: list[RunningLoop] = []
    seen: set[int] = set()
    for ident, frame in sorted(sys._current_frames().items()):
        f: types.FrameType | None = frame
        while f is not None:
            if f.f_code is _RUN_FOREVER:
                loop = f.f_locals.get("self")
                if isinstance(loop, asyncio.AbstractEventLoop) and id(loop) not in seen:
                    seen.add(id(loop))
                    found.append(RunningLoop(loop, ident, names.get(ident, f"<thread {ident}>")))
            f = f.f_back
    return found


def _pending_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    for _ in range(10):  # all_tasks retries itself; another thread may change the set still
        try:
            tasks = asyncio.all_tasks(loop)
        except RuntimeError:
            continue
        return sorted(tasks, key=lambda t: _name_key(t.get_name()))
    return []


def _name_key(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def _frame_of(obj: object) -> types.FrameType | None:
    for attr in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(obj, attr, None)
        if isinstance(frame, types.FrameType):
            return frame
    return None


def _awaited(obj: object) -> object:
    for attr in ("cr_await", "gi_yieldfrom", "ag_await"):
        inner = getattr(obj, attr, None)
        if inner is not None:
            return inner
    return None


def await_chain(task: asyncio.Future[Any]) -> tuple[list[Frame], str | None]:
    """The await chain of a pending task: the frames of its coroutine and of every coroutine
    it awaits in turn (outermost first), and what the innermost one awaits (a description,
    or ``None`` when that is not known: a future awaited from C code, a task running now).
    """
    frames: list[Frame] = []
    coro: object = task.get_coro() if isinstance(task, asyncio.Task) else None
    leaf: str | None = None
    for _ in range(_MAX_CHAIN):
        frame = _frame_of(coro)
        if frame is None:
            break
        frames.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        inner = _awaited(coro)
        if inner is None:
            break
        if _frame_of(inner) is None:
            leaf = _describe_awaitable(inner)
            break
        coro = inner
    return frames, leaf


def _describe_awaitable(obj: object) -> str:
    if isinstance(obj, asyncio.Future):
        return _short_repr(obj)
    # ``await future`` awaits the C future's iterator, which names no future; the garbage
    # collector knows what it refers to (report time only).
    for referent in gc.get_referents(obj):
        if isinstance(referent, asyncio.Future):
            return _short_repr(referent)
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _short_repr(obj: object, limit: int = 200) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the report
        text = f"<{type(obj).__qualname__} (repr failed: {exc!r})>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _awaited_by(task: asyncio.Future[Any]) -> list[str]:
    """The names of the tasks that await ``task`` (Python 3.14+; empty before)."""
    capture_graph: Callable[..., Any] | None = getattr(asyncio, "capture_call_graph", None)
    if capture_graph is None:
        return []
    try:
        graph = capture_graph(task)
    except Exception:  # a coroutine changing under us (another thread runs its loop)
        return []
    names = []
    for waiter in getattr(graph, "awaited_by", ()):
        future = waiter.future
        names.append(repr(future.get_name()) if isinstance(future, asyncio.Task) else "a future")
    return names


def describe_task(task: asyncio.Future[Any]) -> str:
    """``'Task-3' (coroutine heartbeat)``: the task's name and its coroutine."""
    if not isinstance(task, asyncio.Task):
        return _short_repr(task)
    coro = task.get_coro()
    qualname = getattr(coro, "__qualname__", None) or type(coro).__qualname__
    return f"{task.get_name()!r} (coroutine {qualname})"


def format_await_chain(task: asyncio.Future[Any], indent: str = "") -> str:
    """The await chain of ``task``, formatted like a traceback (most recent call last)."""
    frames, leaf = await_chain(task)
    text = format_frames(frames) if frames else "    (no coroutine frame: running or done)\n"
    if leaf is not None:
        text += f"    awaiting {leaf}\n"
    waiters = _awaited_by(task)
    if waiters:
        text += f"    awaited by {', '.join(waiters)}\n"
    if indent:
        text = "".join(indent + line for line in text.splitlines(keepends=True))
    return text


def format_running_loops(loops: list[RunningLoop] | None = None) -> str:
    """A report section: each running loop, its thread, its pending tasks and their await
    chains; ``""`` when no loop runs.
    """
    if loops is None:
        loops = running_loops()
    if not loops:
        return ""
    parts = ["Event loops running (each task's await chain, most recent call last):\n"]
    for running in loops:
        loop = running.loop
        tasks = _pending_tasks(loop)
        current = None
        try:
            current = asyncio.current_task(loop)
        except RuntimeError:
            pass
        parts.append(
            f"--- event loop {type(loop).__name__} (id 0x{id(loop):x}) in thread "
            f"{running.thread!r} (ident {running.ident}): {len(tasks)} pending task(s)\n"
        )
        for task in tasks:
            now = " (running now)" if task is current else ""
            parts.append(f"  task {describe_task(task)}{now}:\n")
            parts.append(format_await_chain(task, indent="  "))
    return "".join(parts)


# -- the task-leak checker ---------------------------------------------------------------


@dataclass(frozen=True)
class LeakedTask:
    """An asyncio task an owner created that was still pending when its loop began closing,
    or when the owner was checked.

    Attributes:
        task: the task (done by now when its loop closed: ``asyncio.run`` cancelled it).
        description: its name and coroutine (``'Task-3' (coroutine heartbeat)``).
        owner: the owner's label.
        when: when it was seen pending (``"when its event loop began closing"``...).
        thread: the name of the thread in which it was seen pending (that runs or closed its
            loop), or ``None`` when it is not known (a loop that does not run).
        created_at: ``file:line in function`` of the code that created it.
        creation_stack: the stack that created it, formatted (most recent call last).
        await_chain: its await chain when it was seen pending, formatted.
    """

    task: asyncio.Future[Any]
    description: str
    owner: str
    when: str
    thread: str | None
    created_at: str
    creation_stack: str
    await_chain: str

    def format(self) -> str:
        where_ = f" in thread {self.thread!r}" if self.thread else ""
        return (
            f"--- task {self.description}, pending {self.when}{where_}\n"
            f"created at {self.created_at}\n"
            f"creation stack (most recent call last):\n{self.creation_stack}"
            f"await chain when it was seen pending (most recent call last):\n{self.await_chain}"
        )


class TaskLeakError(AssertionError):
    """Raised by :meth:`TaskLeakChecker.__exit__` when the current owner left tasks pending."""


@dataclass(eq=False)
class _Record:
    ref: weakref.ref[asyncio.Future[Any]]
    loop: weakref.ref[asyncio.AbstractEventLoop]
    owner: Hashable
    frames: tuple[Frame, ...]
    seen_pending: LeakedTask | None = None


# Tasks of test runners, never the test's: each serves the tests for the runner's life and
# ends when the runner closes (by cancellation at the loop's close, which is its design).
#   anyio's pytest plugin: TestRunner._run_tests_and_fixtures runs each test and fixture
#   in the runner's loop (anyio/_backends/_asyncio.py).
RUNNER_TASKS = frozenset({("anyio._backends._asyncio", "TestRunner._run_tests_and_fixtures")})


def _runner_task(coro: object) -> bool:
    code = getattr(coro, "cr_code", None)
    if code is None:
        return False
    qualname = getattr(coro, "__qualname__", "")
    frame = getattr(coro, "cr_frame", None)
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return (module, qualname) in RUNNER_TASKS


_CLOSING = "when its event loop began closing (asyncio.run cancels such tasks)"
_CLOSED = "when its event loop was closed"
_TEARDOWN = "when it was checked (at its test's teardown)"


class TaskLeakChecker:
    """Records the tasks each owner creates, and which of them were left pending.

    :meth:`start` patches ``asyncio.BaseEventLoop`` (``__init__``, ``create_task``,
    ``close``) and ``asyncio.tasks.all_tasks``; :meth:`stop` restores them. Nothing
    is recorded while no owner is set (:meth:`set_owner`), so between tests each task costs
    one attribute read. As a context manager, it owns what is created inside the block
    (owner ``"the block"``) and raises :class:`TaskLeakError` at its end if a task leaked.
    """

    def __init__(self) -> None:
        self._owner: Hashable | None = None
        self._owner_thread: int | None = None
        self._records: dict[Hashable, list[_Record]] = {}
        self._loop_owners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hashable] = (
            weakref.WeakKeyDictionary()
        )
        self._patches: list[Patch] = []
        self._lock = raw_lock()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> TaskLeakChecker:
        if self._patches:
            raise RuntimeError("the task-leak checker was already started")
        base = asyncio.BaseEventLoop
        init, create_task, close = base.__init__, base.create_task, base.close
        checker = self

        def __init__(loop: asyncio.BaseEventLoop, *args: Any, **kwargs: Any) -> None:
            init(loop, *args, **kwargs)
            owner = checker._owner
            if owner is not None:
                checker._loop_owners[loop] = owner

        def patched_create_task(
            loop: asyncio.BaseEventLoop, coro: Any, *args: Any, **kwargs: Any
        ) -> asyncio.Task[Any]:
            task = create_task(loop, coro, *args, **kwargs)
            if checker._owner is not None and not task.done() and not _runner_task(coro):
                checker._note(loop, task, sys._getframe(1))
            return task

        def patched_close(loop: asyncio.BaseEventLoop) -> None:
            if checker._records:
                checker._seen_pending(loop, _CLOSED)
            close(loop)

        by = "TaskLeakChecker"
        self._patches.append(patch(base, "__init__", __init__, by=by))
        self._patches.append(patch(base, "create_task", patched_create_task, by=by))
        self._patches.append(patch(base, "close", patched_close, by=by))
        all_tasks = asyncio.tasks.all_tasks

        def patched_all_tasks(
            loop: asyncio.AbstractEventLoop | None = None,
        ) -> set[asyncio.Task[Any]]:
            # Every Runner (asyncio's, and the copies pytest-asyncio and anyio use on 3.10)
            # asks for the tasks of its stopped loop to cancel them: the loop begins closing.
            if loop is not None and checker._records and not loop.is_running():
                checker._seen_pending(loop, _CLOSING)
            return all_tasks(loop)

        self._patches.append(patch(asyncio.tasks, "all_tasks", patched_all_tasks, by=by))
        return self

    def stop(self) -> None:
        undo_all(self._patches)
        with self._lock:
            self._records.clear()
        self._owner = None

    def __enter__(self) -> TaskLeakChecker:
        self.start()
        self.set_owner("the block")
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.set_owner(None)
            leaks = self.check("the block")
        finally:
            self.stop()
        if leaks and exc_info[0] is None:
            raise TaskLeakError(format_task_leaks("the block", leaks))

    # -- owners ---------------------------------------------------------------------------

    def set_owner(self, owner: Hashable | None) -> Hashable | None:
        """Make ``owner`` the owner of the tasks created from now on in the calling thread
        (and on loops created from now on); ``None``: nobody. Returns the previous owner."""
        previous = self._owner
        self._owner_thread = threading.get_ident() if owner is not None else None
        self._owner = owner
        return previous

    def has_records(self, owner: Hashable) -> bool:
        return bool(self._records.get(owner))

    def _note(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], frame: Any) -> None:
        owner = self._owner
        if threading.get_ident() != self._owner_thread:
            owner = self._loop_owners.get(loop)
        if owner is None:
            return
        record = _Record(weakref.ref(task), weakref.ref(loop), owner, capture(frame))
        with self._lock:
            records = self._records.setdefault(owner, [])
            records.append(record)
            if len(records) % 1024 == 0:  # a test making many short tasks: keep the live ones
                records[:] = [r for r in records if r.seen_pending or _pending(r)]

    def _seen_pending(self, loop: asyncio.AbstractEventLoop, when: str) -> None:
        with self._lock:
            records = [
                r
                for owned in self._records.values()
                for r in owned
                if r.seen_pending is None and r.loop() is loop and _pending(r)
            ]
        thread = threading.current_thread().name
        for record in records:
            task = record.ref()
            if task is not None:
                record.seen_pending = _leak(record, task, when, thread)

    def check(
        self, owner: Hashable, allow: Callable[[LeakedTask], bool] | None = None
    ) -> list[LeakedTask]:
        """The tasks ``owner`` created that were seen pending when their loop began closing,
        or are pending now, oldest first; forgets ``owner``'s records.

        Args:
            owner: the owner.
            allow: tasks for which it returns true are not reported.
        """
        with self._lock:
            records = self._records.pop(owner, [])
        loops: dict[int, str] | None = None
        leaks: list[LeakedTask] = []
        for record in records:
            leak = record.seen_pending
            task = record.ref()
            if leak is None and task is not None and not task.done():
                if loops is None:
                    loops = {id(r.loop): r.thread for r in running_loops()}
                loop = record.loop()
                leak = _leak(record, task, _TEARDOWN, loops.get(id(loop)))
            if leak is not None and not (allow is not None and allow(leak)):
                leaks.append(leak)
        return leaks


def _pending(record: _Record) -> bool:
    task = record.ref()
    return task is not None and not task.done()


def _leak(record: _Record, task: asyncio.Future[Any], when: str, thread: str | None) -> LeakedTask:
    return LeakedTask(
        task=task,
        description=describe_task(task),
        owner=str(record.owner),
        when=when,
        thread=thread,
        created_at=where(record.frames),
        creation_stack=format_frames(record.frames),
        await_chain=format_await_chain(task),
    )


def format_task_leaks(owner: str, leaks: Iterable[LeakedTask]) -> str:
    """The report for ``leaks``: a headline naming ``owner``, then each task."""
    leaks = list(leaks)
    head = f"{len(leaks)} asyncio task(s) created by {owner} left pending:"
    return "\n".join([head, *(leak.format() for leak in leaks)])
