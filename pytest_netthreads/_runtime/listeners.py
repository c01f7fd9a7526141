"""Listener lists that the code calling them reads without a lock.

A :class:`Listeners` keeps its callables in :attr:`Listeners.current`, a tuple that is
replaced (never mutated) when one is added or removed: the caller loads it once and loops
over it, and with nobody listening that is one attribute load and an empty loop.
"""

from __future__ import annotations

import _thread
import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Listeners"]

F = TypeVar("F", bound=Callable[..., Any])

# One lock for every list: changes are rare and short. Replaced in a forked child, where the
# thread that held it at the fork does not exist.
_lock = _thread.allocate_lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = _thread.allocate_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Listeners(Generic[F]):
    """Callables registered with :meth:`add`, newest first in :attr:`current`."""

    __slots__ = ("_entries", "current")

    def __init__(self) -> None:
        self.current: tuple[F, ...] = ()
        # One tuple per registration (the same callable added twice is two entries).
        self._entries: list[tuple[F]] = []

    def add(self, listener: F) -> Callable[[], None]:
        """Register ``listener``; returns a function that removes it (a second call does
        nothing). Raises ``TypeError`` when ``listener`` is not callable."""
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {listener!r}")
        entry = (listener,)
        with _lock:
            self._entries.insert(0, entry)
            self.current = tuple(e[0] for e in self._entries)

        def remove() -> None:
            with _lock:
                kept = [e for e in self._entries if e is not entry]
                if len(kept) != len(self._entries):
                    self._entries = kept
                    self.current = tuple(e[0] for e in kept)

        return remove
