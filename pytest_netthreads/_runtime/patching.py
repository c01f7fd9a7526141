"""Monkeypatching with ownership: every attribute the kit replaces goes through :func:`patch`.

A :class:`Patch` remembers what it replaced and restores exactly that, and only while the
attribute is still its own: when someone else replaced it afterwards (another library, a
test's ``monkeypatch``, a second patch of ours stacked on top), :meth:`Patch.undo` raises
:class:`PatchConflict` and leaves their value in place instead of silently dropping it.
An attribute the target only inherited is deleted on undo (not set to the inherited value,
which would shadow a later change of the base class). :func:`active` lists what is patched
right now and by whom (for a report header or a bug report).
"""

from __future__ import annotations

import _thread
import os
from types import ModuleType
from typing import Any

__all__ = ["Patch", "PatchConflict", "active", "patch", "undo_all"]

_MISSING: Any = object()

# The patches applied and not undone, oldest first.
_active: list[Patch] = []
_active_lock = _thread.allocate_lock()


def _after_fork_in_child() -> None:
    global _active_lock
    _active_lock = _thread.allocate_lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class PatchConflict(RuntimeError):
    """:meth:`Patch.undo` found another value than its own in the attribute.

    Attributes:
        patch: the patch that could not be undone (it stays in :func:`active`).
        current: what the attribute holds now.
    """

    def __init__(self, patch: Patch, current: object) -> None:
        super().__init__(
            f"{patch.by}: {patch.describe()} was replaced after it was patched (it is now "
            f"{current!r}); not restoring the original over someone else's patch. Undo "
            "patches in the reverse order of applying them."
        )
        self.patch = patch
        self.current = current


class Patch:
    """One replaced attribute (made by :func:`patch`).

    Attributes:
        target: the class or module patched.
        name: the attribute's name.
        new: the value put in place.
        original: the value found in ``target``'s own namespace (``None`` when inherited).
        inherited: ``target`` did not have the attribute itself (only a base class did, or
            nobody): undo deletes it.
        by: who patched it (named in :func:`active` and in errors).
    """

    __slots__ = ("_undone", "by", "inherited", "name", "new", "original", "target")

    def __init__(
        self, target: type | ModuleType, name: str, new: object, original: object, by: str
    ) -> None:
        self.target = target
        self.name = name
        self.new = new
        self.inherited = original is _MISSING
        self.original = None if self.inherited else original
        self.by = by
        self._undone = False

    @property
    def undone(self) -> bool:
        """Whether :meth:`undo` restored the attribute."""
        return self._undone

    @property
    def in_place(self) -> bool:
        """Whether the attribute holds this patch's value right now."""
        return vars(self.target).get(self.name, _MISSING) is self.new

    def describe(self) -> str:
        """``module.Class.name``: what is patched."""
        target = self.target
        if isinstance(target, ModuleType):
            return f"{target.__name__}.{self.name}"
        return f"{target.__module__}.{target.__qualname__}.{self.name}"

    def undo(self) -> None:
        """Put the original back (or delete the attribute, when it was inherited).

        Does nothing when already undone. Raises :class:`PatchConflict`, and changes nothing,
        when the attribute does not hold this patch's value any more; the patch then stays
        active, and ``undo()`` may be called again once the other value is gone.
        """
        with _active_lock:
            if self._undone:
                return
            current = vars(self.target).get(self.name, _MISSING)
            if current is not self.new:
                raise PatchConflict(self, None if current is _MISSING else current)
            if self.inherited:
                delattr(self.target, self.name)
            else:
                setattr(self.target, self.name, self.original)
            self._undone = True
            _active.remove(self)

    def __repr__(self) -> str:
        state = "undone" if self._undone else "active"
        return f"<Patch {self.describe()} by {self.by} ({state})>"


def patch(target: type | ModuleType, name: str, new: object, *, by: str) -> Patch:
    """Set ``target.name = new`` and return the :class:`Patch` that undoes it.

    Args:
        target: a class or a module.
        name: the attribute.
        new: the value to put in place (a function, a ``classmethod``...): stored as given,
            so :meth:`Patch.undo` recognises it.
        by: who patches, for :func:`active` and error messages (``"ThreadLeakChecker"``).

    Raises:
        TypeError: ``target`` is neither a class nor a module, or ``name`` or ``by`` is not
            a non-empty ``str``.
    """
    if not isinstance(target, (type, ModuleType)):
        raise TypeError(f"target must be a class or a module, got {target!r}")
    for what, value in (("name", name), ("by", by)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{what} must be a non-empty str, got {value!r}")
    with _active_lock:
        original = vars(target).get(name, _MISSING)
        setattr(target, name, new)
        applied = Patch(target, name, new, original, by)
        _active.append(applied)
    return applied


def active() -> list[Patch]:
    """The patches applied and not undone, oldest first."""
    with _active_lock:
        return list(_active)


def undo_all(patches: list[Patch]) -> None:
    """Undo ``patches`` newest first (the list's last first), emptying the list.

    Each one is tried: those that raise :class:`PatchConflict` stay in the list (so that a
    later call tries them again), and the first conflict is raised once all were tried.
    """
    kept: list[Patch] = []
    error: PatchConflict | None = None
    for applied in reversed(patches):
        try:
            applied.undo()
        except PatchConflict as exc:
            kept.append(applied)
            error = error or exc
    patches[:] = reversed(kept)
    if error is not None:
        raise error
