"""Bookkeeping for the threads the kit starts for itself.

The detectors must never blame a test for a thread that belongs to the kit (the shared
reactor, for instance), so every long-lived internal thread is registered here.
"""

from __future__ import annotations

import sys
import threading
import traceback
import weakref

_internal: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def mark_internal(thread: threading.Thread) -> None:
    """Record `thread` as one the kit owns and stops itself."""
    _internal.add(thread)


def is_internal(thread: threading.Thread) -> bool:
    """Whether `thread` is one of the kit's own long-lived threads."""
    return thread in _internal


def format_thread_stack(thread: threading.Thread) -> str:
    """The current stack of a live thread, formatted like a traceback (most recent call last)."""
    ident = thread.ident
    frame = sys._current_frames().get(ident) if ident is not None else None
    if frame is None:
        return "    (no stack: the thread is not running)\n"
    return "".join(traceback.format_stack(frame))
