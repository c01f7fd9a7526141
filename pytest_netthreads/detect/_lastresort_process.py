"""The helper process of :class:`~pytest_netthreads.detect.lastresort.ProcessWatchdog`.

Run as ``python -I -S _lastresort_process.py PARENT_PID MEMFD SIGNUM GRACE``, standard
library only. It polls the shared page the parent writes each deadline into (layout in
``lastresort.py``); once a deadline has passed on two polls in a row with no change from the
parent, it writes a header naming the stuck work to its stderr (the parent's real stderr),
sends SIGNUM to the parent (whose faulthandler dumps every thread's stack and re-raises it:
the process ends killed by that signal), and SIGKILL after GRACE seconds if the parent still
lives. When the parent's arm has the C-stack flag (Python 3.14+, faulthandler enabled), it
sends SIGABRT instead, after setting the parent's core-file size limit to 0: faulthandler's
fatal handler adds the C stack of the thread that takes the signal. It ends when its
stdin reaches end of file (the parent stopped it or died) or the
parent is gone.
"""

from __future__ import annotations

import mmap
import os
import resource
import select
import signal
import struct
import sys
import time

POLL = 0.2
# sequence (odd while written), deadline (0: none), label size, flags
HEADER = struct.Struct("=QdII")
FLAG_C_STACK = 1


def _read(page: mmap.mmap) -> tuple[int, float, str, int]:
    seq, deadline, size, flags = HEADER.unpack_from(page, 0)
    label = bytes(page[HEADER.size : HEADER.size + size]).decode("utf-8", "replace")
    return seq, deadline, label, flags


def _no_core_file(pid: int) -> None:
    """A SIGABRT dumps core where the limit allows it: not for a deliberate end."""
    try:
        _, hard = resource.prlimit(pid, resource.RLIMIT_CORE)
        resource.prlimit(pid, resource.RLIMIT_CORE, (0, hard))
    except OSError:  # not permitted here: the system's limit stands
        pass


def _parent_alive(parent: int) -> bool:
    return os.getppid() == parent


def main() -> int:
    parent, fd, signum, grace = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(
        sys.argv[4]
    )
    page = mmap.mmap(fd, mmap.PAGESIZE)
    os.close(fd)
    seen: tuple[int, float] | None = None
    while _parent_alive(parent):
        ready, _, _ = select.select([0], [], [], POLL)
        if ready and not os.read(0, 4096):
            return 0  # the parent stopped us (or died)
        seq, deadline, label, flags = _read(page)
        now = time.monotonic()
        if seq % 2 or not deadline or now < deadline:
            seen = None
            continue
        if seen != (seq, deadline):
            seen = (seq, deadline)  # fire only if the same arm is still late at the next poll
            continue
        sent = signum
        what = "Stacks of every thread (most recent call first)"
        if flags & FLAG_C_STACK:
            sent = signal.SIGABRT
            what += ", then the C stack of its main thread"
            _no_core_file(parent)
        name = signal.Signals(sent).name
        os.write(
            2,
            (
                f"\npytest-netthreads: {label or 'the work'} is still running "
                f"{now - deadline:.1f}s past the last-resort deadline and process {parent} "
                "does not respond (C code holding the GIL?); the watchdog process ends it "
                f"with {name}. {what}:\n"
            ).encode("utf-8", "replace"),
        )
        os.kill(parent, sent)
        end = time.monotonic() + grace
        while _parent_alive(parent) and time.monotonic() < end:
            time.sleep(0.05)
        if _parent_alive(parent):
            os.write(
                2,
                f"\npytest-netthreads: process {parent} survived {name} (its handler was "
                "replaced?); killing it with SIGKILL.\n".encode(),
            )
            os.kill(parent, signal.SIGKILL)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
