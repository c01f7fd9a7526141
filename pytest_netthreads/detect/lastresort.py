"""The last resort that needs no GIL: a helper process that ends this one at a deadline.

The hang watchdog of :mod:`.deadlock` is a Python thread. A test stuck in C code that holds
the GIL (a catastrophic regular expression, an extension that blocks without releasing it)
stops every Python thread, the watchdog too, and with it the interrupt and the last-resort
kill. Only C-level threads and other processes still run then; :class:`ProcessWatchdog` is
the second: a small helper process (standard library only, started on the first deadline)
that reads each deadline and the name of the work from a page of memory it shares with this
process, so that arming costs no system call. When a deadline passes, it writes a header
naming the work to stderr and sends ``signum`` (default ``SIGUSR2``) to this process; a
``faulthandler`` handler registered for that signal dumps every thread's stack without the
GIL and re-raises it, so the process ends killed by that signal. On Python 3.14 and later,
while ``faulthandler`` is enabled for fatal signals (pytest enables it), the helper sends
``SIGABRT`` instead (after setting this process's core-file size limit to 0): faulthandler's
fatal handler then also dumps the C stack of the thread that takes the signal (the main
thread), which shows a hang inside an extension. If the signal's handler was replaced
meanwhile (user code took the signal), the helper sends ``SIGKILL`` after ``grace`` seconds.
The helper ends when it is stopped or this process ends.

``faulthandler``'s own timer (``dump_traceback_later``, one per process, which pytest's
``faulthandler_timeout`` uses) is left alone. A forked child does not inherit the watchdog:
its arms are ignored (the helper watches the parent only).
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import signal
import struct
import subprocess
import sys
import weakref
from time import monotonic

from .._runtime import values
from .locks import raw_lock

__all__ = ["ProcessWatchdog"]

_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lastresort_process.py")
# The shared page: sequence (odd while being written), deadline on time.monotonic()'s clock
# (CLOCK_MONOTONIC, the same in every process; 0: disarmed), label size, flags, label (UTF-8).
_HEADER = struct.Struct("=QdII")
_FLAG_C_STACK = 1  # end the process with SIGABRT: faulthandler adds the C stack (3.14+)
_HAS_C_STACK = sys.version_info >= (3, 14)  # faulthandler.enable(c_stack=True) is new in 3.14
_MAX_LABEL = mmap.PAGESIZE - _HEADER.size

_WATCHDOGS: weakref.WeakSet[ProcessWatchdog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for watchdog in list(_WATCHDOGS):
        watchdog._forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _positive_seconds(value: object, name: str) -> float:
    return values.seconds(value, name, positive=True, maximum=values.MAX_TIMEOUT)


class ProcessWatchdog:
    """Ends this process, from another process, when an armed deadline passes.

    Args:
        stderr_fd: where the header and the stacks go (a duplicate is kept; default 2).
        signum: the signal that dumps the stacks and ends the process.
        c_stack: on Python 3.14+, end the process with ``SIGABRT`` instead when
            ``faulthandler`` is enabled for fatal signals at the time of :meth:`arm`, so that
            its report has the C stack of the main thread too (exit status ``-6``).
        grace: seconds between that signal and ``SIGKILL``, if the process still lives.
    """

    def __init__(
        self,
        *,
        stderr_fd: int = 2,
        signum: int = signal.SIGUSR2,
        grace: float = 5.0,
        c_stack: bool = True,
    ) -> None:
        if isinstance(stderr_fd, bool) or not isinstance(stderr_fd, int):
            raise TypeError(f"stderr_fd must be a file descriptor (int), got {stderr_fd!r}")
        if stderr_fd < 0:
            raise ValueError(f"stderr_fd must be a file descriptor >= 0, got {stderr_fd!r}")
        if isinstance(signum, bool) or not isinstance(signum, int):
            raise TypeError(f"signum must be a signal number, got {signum!r}")
        if signum not in signal.valid_signals() or signum in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"signum must be a signal that can be handled, got {signum!r}")
        self._stderr_fd = stderr_fd
        if not isinstance(c_stack, bool):
            raise TypeError(f"c_stack must be a bool, got {c_stack!r}")
        self._signum = int(signum)  # a plain int: str(Signals.SIGUSR2) is a name on 3.10
        self._c_stack = c_stack and _HAS_C_STACK
        self._grace = _positive_seconds(grace, "grace")
        self._lock = raw_lock()
        self._fd: int | None = None  # the duplicate of stderr_fd
        self._page: mmap.mmap | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._registered = False
        self._seq = 0
        self._label: str | bool | None = False  # the label on the page (False: none yet)
        self._label_size = 0
        self._child = False  # this is a forked child of the process that made it
        _WATCHDOGS.add(self)

    @property
    def running(self) -> bool:
        """Whether the helper process was started (by the first :meth:`arm`)."""
        return self._process is not None

    def arm(self, label: str | None, seconds: float) -> None:
        """End this process if it is still running ``seconds`` from now (unless re-armed or
        disarmed before). Starts the helper process on first use."""
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a str or None, got {label!r}")
        self.arm_checked(label, _positive_seconds(seconds, "seconds"))

    def arm_checked(self, label: str | None, seconds: float) -> None:
        """:meth:`arm` with arguments already checked: ``label`` a str or ``None``,
        ``seconds`` a float, finite and positive (the deadlock detector's, every phase)."""
        with self._lock:
            if self._child:
                return  # a forked child: the helper watches the parent only
            if self._process is None:
                self._start()
            flags = _FLAG_C_STACK if self._c_stack and faulthandler.is_enabled() else 0
            if label == self._label:  # the next phase of the same test: the label stays
                self._write_header(monotonic() + seconds, flags)
                return
            data = (label or "").encode("utf-8", "replace")
            if len(data) > _MAX_LABEL:
                data = data[: _MAX_LABEL - 3] + b"..."
            self._label = label
            self._write(monotonic() + seconds, data, flags)

    def disarm(self) -> None:
        with self._lock:
            if self._page is not None and not self._child:
                self._write_header(0.0, 0)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the helper (waiting up to ``timeout`` seconds, then killing it)."""
        timeout = _positive_seconds(timeout, "timeout")
        with self._lock:
            process, self._process = self._process, None
            if self._child:
                return
            if process is not None:
                assert process.stdin is not None
                process.stdin.close()  # end of file: the helper ends
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout)
            if self._registered:
                faulthandler.unregister(self._signum)
                self._registered = False
            if self._page is not None:
                self._page.close()
                self._page = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _start(self) -> None:
        fd = os.dup(self._stderr_fd)
        memfd = -1
        try:
            if hasattr(os, "memfd_create"):
                memfd = os.memfd_create("pytest-netthreads-watchdog", os.MFD_CLOEXEC)
            else:  # pragma: no cover - Linux has memfd_create
                import tempfile

                with tempfile.TemporaryFile() as tmp:
                    memfd = os.dup(tmp.fileno())
            os.ftruncate(memfd, mmap.PAGESIZE)
            page = mmap.mmap(memfd, mmap.PAGESIZE)
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    _SCRIPT,
                    str(os.getpid()),
                    str(memfd),
                    str(self._signum),
                    str(self._grace),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=fd,
                pass_fds=(memfd,),
            )
        except BaseException:
            os.close(fd)
            raise
        finally:
            if memfd >= 0:
                os.close(memfd)
        self._fd = fd
        self._page = page
        self._process = process
        self._label = False  # a new page: no label on it yet
        # Only when the signal is free: a handler someone installed stays theirs (the
        # helper then ends the process with SIGKILL, without stacks).
        if signal.getsignal(self._signum) in (signal.SIG_DFL, None):
            faulthandler.register(self._signum, file=fd, all_threads=True, chain=True)
            self._registered = True

    def _write(self, deadline: float, label: bytes, flags: int) -> None:
        page = self._page
        assert page is not None
        self._seq += 1  # odd: being written
        _HEADER.pack_into(page, 0, self._seq, 0.0, 0, 0)
        page[_HEADER.size : _HEADER.size + len(label)] = label
        self._seq += 1
        self._label_size = len(label)
        _HEADER.pack_into(page, 0, self._seq, deadline, self._label_size, flags)

    def _write_header(self, deadline: float, flags: int) -> None:
        """A new deadline with the label in place: one write of the header. A reader that
        sees it half-written sees a (sequence, deadline) pair that does not last until its
        next poll, and fires only on one that does."""
        assert self._page is not None
        self._seq += 2
        _HEADER.pack_into(self._page, 0, self._seq, deadline, self._label_size, flags)

    def _forget_in_child(self) -> None:
        # The page is shared with the parent: never write to it from here.
        self._child = True
        self._lock = raw_lock()
        self._process = None
        self._registered = False
        page, self._page = self._page, None
        if page is not None:
            page.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
