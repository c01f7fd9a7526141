"""The kit's own threads, and the seam through which a detector hears who created what.

The detectors must never blame a test for a thread that belongs to the kit (the shared
reactor, for instance), so every long-lived internal thread is registered here.

A kit object that starts threads later on its own behalf (a
:class:`~pytest_netthreads.ThreadedServer` starts one per connection, from the reactor's
thread) announces its creation with :func:`note_created`; a detector that attributes threads
to their creator (the thread-leak checker) listens with :func:`add_creation_listener`. So the
detector needs no knowledge of the servers, and the servers none of the detector.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from .listeners import Listeners

_internal: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def mark_internal(thread: threading.Thread) -> None:
    """Record `thread` as one the kit owns and stops itself."""
    _internal.add(thread)


def is_internal(thread: threading.Thread) -> bool:
    """Whether `thread` is one of the kit's own long-lived threads."""
    return thread in _internal


CreationListener = Callable[[object], None]
"""Called as ``listener(obj)`` in the thread that created ``obj``, at the end of its
``__init__``. It must not raise: the object's creator would get the exception."""

_creation_listeners: Listeners[CreationListener] = Listeners()


def note_created(obj: object) -> None:
    """Announce ``obj``, a kit object that will start threads on its own later.

    With nobody listening this costs an attribute load and an empty loop.
    """
    for listener in _creation_listeners.current:
        listener(obj)


def add_creation_listener(listener: CreationListener) -> Callable[[], None]:
    """Call ``listener(obj)`` for each object announced with :func:`note_created` from now on.

    Returns a function that removes it (calling it again does nothing). Raises ``TypeError``
    when ``listener`` is not callable.
    """
    return _creation_listeners.add(listener)
