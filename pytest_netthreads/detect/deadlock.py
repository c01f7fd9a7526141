"""The wait-for graph (deadlocks found when they form) and the hang watchdog.

A thread waits for a tracked lock (which its owner holds) or, in ``Thread.join``, for another
thread. When a thread is about to block, :class:`DeadlockDetector` follows that chain; if it
comes back to the thread, the threads wait for each other forever. Each thread of the cycle is
made to raise :class:`DeadlockError` in its wait (tracked waits run in short slices, so the
raise is prompt), and so is the thread running the test, wherever it waits: the main thread
gets a signal whose handler raises (lock waits, joins, sleeps and socket calls are
interruptible by signals on POSIX).

The one watchdog thread also re-checks the graph on every tick (a safety net for races between
threads blocking at the same moment), fails a test still running at its deadline with
:class:`HangError` (every thread's stack and the wait-for state), and, as the last resort when
the interrupted test does not stop within ``kill_grace`` seconds, writes the report to stderr,
says that it kills the process, and exits it (status 70). A test stuck in C code that holds the
GIL stops every Python thread, this one too: for it, a helper process
(:class:`~.lastresort.ProcessWatchdog`) ends the process ``kill_grace`` seconds after that,
with every thread's stack.

Usable without pytest::

    with DeadlockDetector() as detector:
        detector.arm("my job", timeout=10.0)
        ...  # a deadlock here raises DeadlockError in the waiting threads
        detector.disarm()
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from types import FrameType
from typing import Any

from .._runtime import values
from .._runtime.stacks import format_thread_stack
from .._runtime.threads import is_internal, mark_internal
from . import locks
from .lastresort import ProcessWatchdog
from .locks import TrackedLock, TrackedRLock, Wait
from .tasks import format_running_loops

__all__ = [
    "DeadlockDetector",
    "DeadlockError",
    "DeadlockReport",
    "HangError",
    "find_cycle",
    "find_cycles",
    "format_wait_state",
]

#: One step of a cycle: (waiting thread ident, its wait, ident of the thread it waits for).
Step = tuple[int, Wait, int]


def _seconds(value: object, name: str, *, zero: bool = False) -> float:
    """``value`` as seconds: finite, > 0 (>= 0 with ``zero``), at most ``TIMEOUT_MAX``."""
    return values.seconds(value, name, positive=not zero, maximum=values.MAX_TIMEOUT)


@dataclass(frozen=True)
class DeadlockReport:
    """What a detector found.

    Attributes:
        kind: ``"cycle"`` (a wait-for cycle) or ``"timeout"`` (still running at the deadline).
        text: the full report (cycle, lock sites, every thread's stack).
        threads: names of the threads in the cycle (for a timeout: the test's thread).
        label: what was running (the test's node id), if known.
    """

    kind: str
    text: str
    threads: tuple[str, ...]
    label: str | None = None
    idents: tuple[int, ...] = ()

    def join_threads(self, timeout: float) -> None:
        """Give the threads of the cycle (interrupted in their waits) up to ``timeout`` seconds
        in all to finish, so that what they raise is reported with the test that owns them."""
        deadline = monotonic() + _seconds(timeout, "timeout", zero=True)
        me = threading.get_ident()
        for thread in threading.enumerate():
            if thread.ident in self.idents and thread.ident != me:
                thread.join(max(0.0, deadline - monotonic()))


class DeadlockError(BaseException):
    """Raised in the threads of a wait-for cycle and in the thread running the test.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that ``except Exception`` in the code
    under test does not swallow it.
    """

    def __init__(self, report: DeadlockReport, message: str | None = None) -> None:
        super().__init__(report.text if message is None else message)
        self.report = report


class HangError(BaseException):
    """Raised in the thread running the test when it is still running at its deadline."""

    def __init__(self, report: DeadlockReport) -> None:
        super().__init__(report.text)
        self.report = report


def _waited_thread(wait: Wait) -> int | None:
    """The ident of the thread ``wait`` waits for, if any thread can release it."""
    target = wait.target
    if isinstance(target, threading.Thread):
        return target.ident if target.is_alive() else None
    if isinstance(target, (TrackedLock, TrackedRLock)):
        owner = target.owner
        if owner is None or not target.locked():
            return None
        return owner
    return None


def find_cycle(start: int, waits: dict[int, Wait]) -> list[Step] | None:
    """The wait-for cycle through thread ``start``, or ``None``.

    Timed waits end by themselves and do not count. A thread waiting for a plain lock it holds
    itself is not a deadlock: a plain lock may be released by another thread (the pattern
    ``Condition.wait`` uses).
    """
    path: list[Step] = []
    seen: set[int] = set()
    node = start
    while True:
        wait = waits.get(node)
        if wait is None or wait.timed:
            return None
        nxt = _waited_thread(wait)
        if nxt is None:
            return None
        path.append((node, wait, nxt))
        if nxt == start:
            return path if len(path) > 1 else None
        if nxt in seen or nxt == node:
            return None
        seen.add(node)
        node = nxt


def find_cycles(waits: dict[int, Wait]) -> list[list[Step]]:
    """Every wait-for cycle in ``waits`` (each once)."""
    cycles: list[list[Step]] = []
    covered: set[int] = set()
    for ident in waits:
        if ident in covered:
            continue
        cycle = find_cycle(ident, waits)
        if cycle is not None:
            covered.update(step[0] for step in cycle)
            cycles.append(cycle)
    return cycles


def _thread_names() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if t.ident is not None}


def _describe_wait(wait: Wait, names: dict[int, str]) -> list[str]:
    lines = [
        f"  thread {wait.thread.name!r} waits for {locks.describe_target(wait.target)}",
        f"      waiting since {monotonic() - wait.since:.1f}s, called at {wait.site}",
    ]
    target = wait.target
    if isinstance(target, (TrackedLock, TrackedRLock)):
        owner = target.owner
        if owner is not None:
            holder = names.get(owner, f"<thread {owner}>")
            lines.append(f"      held by thread {holder!r}, acquired at {target.acquired_at()}")
    return lines


def format_wait_state(waits: dict[int, Wait]) -> str:
    """The wait-for state: who waits for what, held by whom, acquired where."""
    if not waits:
        return "  (no thread waits in a tracked lock or a join)\n"
    names = _thread_names()
    out: list[str] = []
    for wait in waits.values():
        out.extend(_describe_wait(wait, names))
    return "\n".join(out) + "\n"


def _format_stacks(idents: list[int] | None = None) -> str:
    parts: list[str] = []
    threads = threading.enumerate()
    if idents is not None:
        order = {ident: i for i, ident in enumerate(idents)}
        threads = sorted(
            (t for t in threads if t.ident in order), key=lambda t: order[t.ident or 0]
        )
    for thread in threads:
        if thread is threading.current_thread() and idents is None:
            continue
        tag = " (pytest-netthreads internal)" if is_internal(thread) else ""
        parts.append(f"--- thread {thread.name!r} (ident {thread.ident}){tag}:\n")
        # Without the detectors' own frames at its top, nor the test runner's.
        parts.append(format_thread_stack(thread, skip_prefix=_DETECT_DIR, hide_runner=True))
    return "".join(parts)


def _format_loops() -> str:
    """The running event loops and their tasks' await chains (nothing when none runs)."""
    try:
        return format_running_loops()
    except Exception as exc:  # the report must be made even if a loop cannot be read
        return f"(the event loops could not be read: {exc!r})\n"


_DETECT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def format_cycle(cycle: list[Step], label: str | None) -> str:
    """The report of a wait-for cycle."""
    names = _thread_names()
    head = f"Deadlock: a wait-for cycle of {len(cycle)} threads formed"
    if label:
        head += f" in {label}"
    lines = [head + ":"]
    for _, wait, _ in cycle:
        lines.extend(_describe_wait(wait, names))
    lines.append("Stacks of the threads in the cycle (most recent call last):")
    return "\n".join(lines) + "\n" + _format_stacks([step[0] for step in cycle])


_DETECTORS: weakref.WeakSet[DeadlockDetector] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for detector in list(_DETECTORS):
        detector._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DeadlockDetector:
    """Wait-for cycle detection at block time plus the session's one hang watchdog thread.

    Args:
        tick: how often the watchdog wakes up (deadline, cycle re-check).
        kill_grace: seconds after an interrupt before the process is killed, as the last
            resort, if the interrupted test is still running.
        interrupt_signal: the signal sent to the main thread to interrupt a blocking call.
        on_report: called (in whichever thread found it) with each report.
        before_kill: called in the watchdog thread right before the last-resort kill writes
            to file descriptor 2 (the plugin uses it to stop pytest's output capture).
        process_watchdog: also arm a :class:`~.lastresort.ProcessWatchdog` (a helper process,
            started on the first deadline) for ``kill_grace`` seconds after the last resort:
            it ends the process, with every thread's stack, when the GIL is held for good and
            no Python thread (this watchdog neither) runs.
        stderr_fd: where the process watchdog writes (default 2; the plugin passes a
            duplicate of the real stderr, which pytest's capture replaces during tests).
    """

    def __init__(
        self,
        *,
        tick: float = 0.1,
        kill_grace: float = 5.0,
        interrupt_signal: int = signal.SIGUSR1,
        on_report: Callable[[DeadlockReport], None] | None = None,
        before_kill: Callable[[], None] | None = None,
        process_watchdog: bool = True,
        stderr_fd: int = 2,
    ) -> None:
        self._tick = _seconds(tick, "tick")
        self._kill_grace = _seconds(kill_grace, "kill_grace")
        if isinstance(interrupt_signal, bool) or not isinstance(interrupt_signal, int):
            raise TypeError(f"interrupt_signal must be a signal number, got {interrupt_signal!r}")
        if interrupt_signal not in signal.valid_signals() or interrupt_signal in (
            signal.SIGKILL,
            signal.SIGSTOP,
        ):
            raise ValueError(
                f"interrupt_signal must be a signal that can be handled, got {interrupt_signal!r}"
            )
        for name, func in (("on_report", on_report), ("before_kill", before_kill)):
            if func is not None and not callable(func):
                raise TypeError(f"{name} must be callable or None, got {func!r}")
        if not isinstance(process_watchdog, bool):
            raise TypeError(f"process_watchdog must be a bool, got {process_watchdog!r}")
        self._signal = interrupt_signal
        self._on_report = on_report
        self._before_kill = before_kill
        self._outside = ProcessWatchdog(stderr_fd=stderr_fd) if process_watchdog else None
        self._state_lock = locks.raw_lock()
        self._wake = locks.raw_lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._prev_handler: Any = None
        self._signal_installed = False
        self._remove_listener: Callable[[], None] | None = None
        self._main_ident = threading.main_thread().ident
        # the current arm
        self._generation = 0
        self._label: str | None = None
        self._test_ident: int | None = None
        self._deadline: float | None = None
        self._timeout: float | None = None
        self._interrupted_at: float | None = None
        self._source: str | None = None
        self._phase: str | None = None
        self._reported: set[frozenset[int]] = set()
        self._reports: list[DeadlockReport] = []
        self._forked = False  # a forked child: the watchdog thread did not come along
        _DETECTORS.add(self)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> DeadlockDetector:
        if self._thread is not None:
            raise RuntimeError("the deadlock detector was already started")
        locks.install(deadlock=True)
        self._remove_listener = locks.add_block_listener(self._on_block)
        if threading.current_thread() is threading.main_thread() and hasattr(
            signal, "pthread_kill"
        ):
            self._prev_handler = signal.signal(self._signal, self._handle_signal)
            self._signal_installed = True
        self._wake.acquire()  # held while the watchdog runs; stop() releases it
        self._start_thread()
        return self

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._run, name="netthreads-watchdog", daemon=True)
        mark_internal(thread)
        self._thread = thread
        thread.start()

    def _after_fork_in_child(self) -> None:
        # Only the forking thread lives on: the watchdog thread is gone, and may have held
        # the state lock at the fork. The next arm() starts a new one.
        self._state_lock = locks.raw_lock()
        self._wake = locks.raw_lock()
        self._wake.acquire()
        self._main_ident = threading.main_thread().ident
        self._forked = self._thread is not None

    def stop(self, timeout: float = 5.0) -> None:
        timeout = _seconds(timeout, "timeout", zero=True)
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.release()
        thread.join(timeout)
        self._thread = None
        if self._outside is not None:
            self._outside.stop(max(timeout, 0.1))
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        try:
            locks.uninstall(deadlock=True)  # may raise PatchConflict: threading was re-patched
        finally:
            if self._signal_installed:
                prev = self._prev_handler
                signal.signal(self._signal, signal.SIG_DFL if prev is None else prev)
                self._prev_handler = None
                self._signal_installed = False

    def __enter__(self) -> DeadlockDetector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- per test ---------------------------------------------------------------------

    def arm(
        self,
        label: str | None,
        timeout: float | None,
        ident: int | None = None,
        *,
        source: str | None = None,
        phase: str | None = None,
    ) -> None:
        """Watch the work ``label`` running in thread ``ident`` (default: the caller).

        Args:
            label: a name for the reports (a test's node id).
            timeout: fail it with :class:`HangError` if still running after this many
                seconds; ``None`` or ``0`` for no deadline (cycles are still detected).
            ident: the thread to interrupt.
            source: what set the deadline, named in the hang report
                (``"--deadlock-timeout"``).
            phase: the part of the work now running (``"setup"``, ``"call"``,
                ``"teardown"``), named in the hang report (``hung in teardown``).
        """
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a str or None, got {label!r}")
        if timeout is not None:
            timeout = _seconds(timeout, "timeout", zero=True)
        if ident is not None and (isinstance(ident, bool) or not isinstance(ident, int)):
            raise TypeError(f"ident must be a thread ident (int) or None, got {ident!r}")
        if source is not None and not isinstance(source, str):
            raise TypeError(f"source must be a str or None, got {source!r}")
        if phase is not None and not isinstance(phase, str):
            raise TypeError(f"phase must be a str or None, got {phase!r}")
        self._arm(label, timeout, ident, source, phase)

    def _arm(
        self,
        label: str | None,
        timeout: float | None,
        ident: int | None,
        source: str | None,
        phase: str | None,
    ) -> None:
        """:meth:`arm` with arguments already checked (the plugin's, once per phase)."""
        if self._forked:
            self._forked = False
            self._start_thread()
        with self._state_lock:
            self._generation += 1
            self._label = label
            self._test_ident = threading.get_ident() if ident is None else ident
            self._timeout = timeout or None
            self._source = source
            self._phase = phase
            self._deadline = monotonic() + timeout if timeout else None
            self._interrupted_at = None
            self._reported = set()
        outside = self._outside
        if outside is not None and self._thread is not None:
            if timeout:
                # Past the Python last resort (deadline + kill_grace) by kill_grace again.
                outside.arm_checked(label, timeout + 2 * self._kill_grace)
            else:
                outside.disarm()

    def disarm(self) -> None:
        """Stop watching: no deadline, no interrupt of the thread that was armed (cycles among
        other threads are still broken). The plugin calls it after each test, and when a
        debugger starts."""
        self._disarm(True)

    def _disarm(self, outside: bool) -> None:
        """:meth:`disarm`; with ``outside=False`` the process watchdog keeps its deadline
        (the plugin, between two phases of a test: the next phase's arm replaces it)."""
        with self._state_lock:
            ident = self._test_ident
            self._generation += 1
            self._label = None
            self._phase = None
            self._test_ident = None
            self._deadline = None
            self._interrupted_at = None
        if outside and self._outside is not None:
            self._outside.disarm()
        if ident is not None:
            locks.cancel_abort(ident)

    @property
    def armed(self) -> bool:
        """Whether a thread is being watched (between :meth:`arm` and :meth:`disarm`)."""
        return self._test_ident is not None

    def has_reports(self) -> bool:
        """Whether :meth:`take_reports` would return any (a cheap check, no lock taken)."""
        return bool(self._reports)

    def take_reports(self) -> list[DeadlockReport]:
        """The reports since the last call (oldest first)."""
        with self._state_lock:
            reports, self._reports = self._reports, []
        return reports

    # -- detection --------------------------------------------------------------------

    def _on_block(self, ident: int) -> None:
        cycle = find_cycle(ident, locks.waits())
        if cycle is not None:
            self._found_cycle(cycle)

    def _found_cycle(self, cycle: list[Step]) -> None:
        key = frozenset(step[0] for step in cycle)
        with self._state_lock:
            if key in self._reported:
                return
            self._reported.add(key)
            label = self._label
            test_ident = self._test_ident
        report = DeadlockReport(
            "cycle",
            format_cycle(cycle, label),
            tuple(step[1].thread.name for step in cycle),
            label,
            tuple(step[0] for step in cycle),
        )
        self._publish(report)
        names = ", ".join(repr(name) for name in report.threads)
        for ident in key:
            if ident != test_ident:
                # Short: the full report goes to the test (and to on_report).
                locks.request_abort(
                    ident,
                    DeadlockError(
                        report, f"aborted: this thread was in a wait-for cycle with {names}"
                    ),
                )
        if test_ident is not None:
            self._interrupt(test_ident, DeadlockError(report))

    def _publish(self, report: DeadlockReport) -> None:
        with self._state_lock:
            self._reports.append(report)
            if self._test_ident is not None and self._interrupted_at is None:
                self._interrupted_at = monotonic()
        if self._on_report is not None:
            self._on_report(report)

    def _interrupt(self, ident: int, exc: BaseException) -> None:
        locks.request_abort(ident, exc, sticky=True)
        self._signal_if_needed(ident)

    def _signal_if_needed(self, ident: int) -> None:
        # A thread in a tracked wait or join sees the abort request within WAIT_SLICE. Other
        # blocking calls of the main thread need the signal. Never signal a thread inside a
        # tracked join: CPython <= 3.12 marks the joined thread stopped when an exception
        # interrupts Thread.join (the bpo-45274 clean-up releases the lock the live thread
        # holds).
        if (
            ident == self._main_ident
            and self._signal_installed
            and not locks.is_waiting(ident)
            and locks.abort_pending(ident)
        ):
            signal.pthread_kill(ident, self._signal)

    def _handle_signal(self, signum: int, frame: FrameType | None) -> None:
        exc = locks.cancel_abort(threading.get_ident())
        if exc is not None:
            raise exc
        prev = self._prev_handler
        if callable(prev):
            prev(signum, frame)

    # -- the watchdog thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            if self._wake.acquire(True, self._tick):
                return  # stop() released it
            self._check_deadline()
            waits = locks.waits()
            if len(waits) > 1:
                for cycle in find_cycles(waits):
                    self._found_cycle(cycle)

    def _check_deadline(self) -> None:
        now = monotonic()
        with self._state_lock:
            generation = self._generation
            deadline = self._deadline
            interrupted = self._interrupted_at
            test_ident = self._test_ident
            label = self._label
            timeout = self._timeout
            source = self._source
            phase = self._phase
        if test_ident is None:
            return
        if interrupted is not None:
            if now - interrupted >= self._kill_grace:
                self._kill(label, generation)
            else:
                # The request may have raced with the thread leaving a tracked wait.
                self._signal_if_needed(test_ident)
            return
        if deadline is None or now < deadline:
            return
        why = f" ({source})" if source else ""
        where = f" hung in {phase}:" if phase else ""
        text = (
            f"Hang: {label or 'the test'}{where} still running after {timeout:g}s{why}; "
            "no wait-for cycle among tracked locks and joins.\n"
            "Wait-for state:\n" + format_wait_state(locks.waits()) + "Stacks of every thread "
            "(most recent call last):\n" + _format_stacks() + _format_loops()
        )
        names = _thread_names()
        report = DeadlockReport("timeout", text, (names.get(test_ident, str(test_ident)),), label)
        with self._state_lock:
            if generation != self._generation:
                return
        self._publish(report)
        self._interrupt(test_ident, HangError(report))

    def _kill(self, label: str | None, generation: int) -> None:
        with self._state_lock:
            if generation != self._generation:
                return
        message = (
            f"\npytest-netthreads: {label or 'the test'} did not stop within "
            f"{self._kill_grace:g}s after it was interrupted; killing process {os.getpid()} "
            "as the last resort. Stacks of every thread:\n" + _format_stacks() + _format_loops()
        )
        try:
            if self._before_kill is not None:
                self._before_kill()
            sys.stderr.flush()
            os.write(2, message.encode("utf-8", "replace"))
        finally:
            os._exit(70)
