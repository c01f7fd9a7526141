"""The helper process of :class:`~pytest_netthreads.detect.lastresort.ProcessWatchdog`.

Run as ``python -I -S _lastresort_process.py PARENT_PID MEMFD SIGNUM GRACE``, standard
library only. It polls the shared page the parent writes each deadline into (layout in
``lastresort.py``); once a deadline has passed on two polls in a row with no change from the
parent, it writes a header naming the stuck work to its stderr (the parent's real stderr),
sends SIGNUM to the parent (whose faulthandler dumps every thread's stack and re-raises it:
the process ends killed by that signal), and SIGKILL after GRACE seconds if the parent still
lives. It ends when its stdin reaches end of file (the parent stopped it or died) or the
parent is gone.
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import struct
import sys
import time

POLL = 0.2
HEADER = struct.Struct("=QdI")  # sequence (odd while written), deadline (0: none), label size


def _read(page: mmap.mmap) -> tuple[int, float, str]:
    seq, deadline, size = HEADER.unpack_from(page, 0)
    label = bytes(page[HEADER.size : HEADER.size + size]).decode("utf-8", "replace")
    return seq, deadline, label


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
        seq, deadline, label = _read(page)
        now = time.monotonic()
        if seq % 2 or not deadline or now < deadline:
            seen = None
            continue
        if seen != (seq, deadline):
            seen = (seq, deadline)  # fire only if the same arm is still late at the next poll
            continue
        name = signal.Signals(signum).name
        os.write(
            2,
            (
                f"\npytest-netthreads: {label or 'the work'} is still running "
                f"{now - deadline:.1f}s past the last-resort deadline and process {parent} "
                "does not respond (C code holding the GIL?); the watchdog process ends it "
                f"with {name}. Stacks of every thread (most recent call first):\n"
            ).encode("utf-8", "replace"),
        )
        os.kill(parent, signum)
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
