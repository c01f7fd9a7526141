"""The lock-order graph: potential deadlocks, even in runs that did not deadlock.

Locks are grouped in classes by where they were created (:class:`~.locks.LockClass`). When a
thread acquires a lock of class B (blocking, without a timeout) while it holds one of class A,
the graph gets the edge A -> B, remembered with the thread and the ``file:line`` of both
acquisitions. A cycle (A -> B and B -> A, or longer) means two threads can each hold one lock
and wait for the other: a deadlock waiting to happen, the idea behind Linux lockdep and
ThreadSanitizer.

Not reported: RLock re-entry (not an acquisition), non-blocking and timed acquires (they cannot
wait forever), consistent orders, and two locks of the same class (nested locks created at one
line, e.g. per-object locks taken in a fixed order, cannot be told apart by creation site).

Not recorded either: edges formed by the thread running the garbage collector while it
collects. A ``__del__`` or a weakref callback of an unreachable object runs wherever the
collection happened to start, under whatever locks that thread held then (even inside a
tracked lock's own code): the lock it takes is not taken in the order the user's code takes
locks. ``gc.callbacks`` say when a collection starts and stops; the edge listener, not the
acquisition path, reads the flag they set, so acquiring a lock costs nothing more. An edge
skipped so is still new the next time it is seen outside a collection.

Usable without pytest::

    with LockOrderChecker() as checker:
        run_the_code()
    for report in checker.take_reports():
        print(report.text)
"""

from __future__ import annotations

import _thread
import gc
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from .._runtime.stacks import stack_lines, walk
from . import locks
from .locks import LockClass, Site

__all__ = ["LockOrderChecker", "LockOrderEdge", "LockOrderReport"]


@dataclass(frozen=True)
class LockOrderEdge:
    """``second`` was acquired while ``first`` was held.

    Attributes:
        first: the class of the lock already held.
        second: the class of the lock acquired then.
        thread: the name of the thread that did it.
        first_acquired: where the held lock had been acquired.
        second_acquired: where the second lock was acquired.
        stack: the formatted stack at the second acquisition (innermost frames).
    """

    first: LockClass
    second: LockClass
    thread: str
    first_acquired: Site | None
    second_acquired: Site
    stack: tuple[str, ...]

    def format(self) -> str:
        return (
            f"  thread {self.thread!r} acquired\n"
            f"    {self.second.describe()}\n"
            f"      at {self.second_acquired}\n"
            f"    while holding {self.first.describe()}\n"
            f"      acquired at {self.first_acquired}\n"
            "    stack at the second acquisition:\n"
            + "".join("    " + line.replace("\n", "\n    ").rstrip(" ") for line in self.stack)
        )


@dataclass(frozen=True)
class LockOrderReport:
    """A cycle in the lock-order graph.

    Attributes:
        edges: the cycle's edges, each the first time it was seen.
        text: the full report.
    """

    edges: tuple[LockOrderEdge, ...]
    text: str


def _find_path(start: LockClass, goal: LockClass) -> list[LockOrderEdge] | None:
    """Edges leading from ``start`` to ``goal`` in the graph (depth first), or ``None``."""
    stack: list[tuple[LockClass, list[LockOrderEdge]]] = [(start, [])]
    seen = {start}
    while stack:
        node, path = stack.pop()
        for nxt, edge in list(node.after.items()):
            if nxt is goal:
                return [*path, edge]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, edge]))
    return None


def format_report(edges: list[LockOrderEdge]) -> str:
    names = " -> ".join(f"{e.first.site.filename}:{e.first.site.lineno}" for e in edges)
    lines = [
        f"Lock-order inversion (potential deadlock) between {len(edges)} lock classes: "
        f"{names} -> back to the first.",
        "Each order was seen as follows; threads taking them at the same time can deadlock:",
    ]
    for i, edge in enumerate(edges, 1):
        lines.append(f"order {i}:")
        lines.append(edge.format())
    return "\n".join(lines) + "\n"


_CHECKERS: weakref.WeakSet[LockOrderChecker] = weakref.WeakSet()

# The ident of the thread running the garbage collector, while it collects (else None).
_collecting: int | None = None
_gc_users = 0  # checkers started: the gc callback is installed while there is one
_gc_users_lock = locks.raw_lock()


def _on_gc(phase: str, info: dict[str, int]) -> None:
    # Runs in the collecting thread, inside the collection (which may have started in any
    # allocation, a tracked lock's own code included): no lock, no allocation to speak of.
    global _collecting
    _collecting = _thread.get_ident() if phase == "start" else None


def _watch_gc() -> None:
    global _gc_users
    with _gc_users_lock:
        if _gc_users == 0:
            gc.callbacks.append(_on_gc)
        _gc_users += 1


def _unwatch_gc() -> None:
    global _gc_users, _collecting
    with _gc_users_lock:
        _gc_users -= 1
        if _gc_users == 0:
            try:
                gc.callbacks.remove(_on_gc)
            except ValueError:  # someone cleared gc.callbacks
                pass
            _collecting = None


def _after_fork_in_child() -> None:
    global _gc_users_lock, _collecting
    # Another thread may have been recording an edge at the fork: a fresh lock for each.
    for checker in list(_CHECKERS):
        checker._lock = locks.raw_lock()
    _gc_users_lock = locks.raw_lock()
    _collecting = None  # a collection in another thread did not come along


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LockOrderChecker:
    """Records lock-order edges while active and reports every cycle once.

    Args:
        on_report: called (in the thread that closed the cycle) with each report.
    """

    def __init__(self, *, on_report: Callable[[LockOrderReport], None] | None = None) -> None:
        if on_report is not None and not callable(on_report):
            raise TypeError(f"on_report must be callable or None, got {on_report!r}")
        self._on_report = on_report
        self._lock = locks.raw_lock()
        self._reports: list[LockOrderReport] = []
        self._reported: set[frozenset[LockClass]] = set()
        self._started = False
        self._remove_listener: Callable[[], None] | None = None
        _CHECKERS.add(self)

    def start(self) -> LockOrderChecker:
        if self._started:
            raise RuntimeError("the lock-order checker was already started")
        self._started = True
        locks.install(deadlock=False, lock_order=True)
        _watch_gc()
        # The newest listener is called first: a nested checker records (and reports) the
        # edges that appear while it runs.
        self._remove_listener = locks.add_edge_listener(self._on_new_edge)
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        _unwatch_gc()
        locks.uninstall(deadlock=False, lock_order=True)

    def __enter__(self) -> LockOrderChecker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def has_reports(self) -> bool:
        """Whether :meth:`take_reports` would return any (a cheap check, no lock taken)."""
        return bool(self._reports)

    def take_reports(self) -> list[LockOrderReport]:
        """The reports since the last call (oldest first)."""
        with self._lock:
            reports, self._reports = self._reports, []
        return reports

    def _on_new_edge(self, held: Any, lock: Any, frame: FrameType) -> None:
        collecting = _collecting
        if collecting is not None and collecting == _thread.get_ident():
            # A finalizer run by the garbage collector: not the user's lock order. (Also
            # what keeps a collection started inside this method, under self._lock, from
            # coming back here.)
            return
        first: LockClass = held.lock_class
        second: LockClass = lock.lock_class
        report = None
        with self._lock:
            if second in first.after:
                return
            edge = LockOrderEdge(
                first,
                second,
                threading.current_thread().name,
                held.acquired_at(),
                Site.of_frame(frame),
                tuple(stack_lines(walk(frame), limit=6, hide_runner=True)[0]),
            )
            first.after[second] = edge
            back = _find_path(second, first)
            if back is not None:
                cycle = [edge, *back]
                key = frozenset(e.first for e in cycle)
                if key not in self._reported:
                    self._reported.add(key)
                    report = LockOrderReport(tuple(cycle), format_report(cycle))
                    self._reports.append(report)
        if report is not None and self._on_report is not None:
            self._on_report(report)
