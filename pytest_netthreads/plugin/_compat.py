"""Other interpreters and plugins: free-threaded builds, pytest-run-parallel."""

from __future__ import annotations

import sys

import pytest

from .._runtime import patching

_NO_GIL_NOTE = (
    "pytest-netthreads: the GIL is disabled (free-threaded build), on which this plugin is "
    "untested: lock tracking and the deadlock and lock-order detectors (--deadlock-timeout, "
    "--lock-order-check) are unverified here"
)


def _no_gil_note(gil_enabled: bool | None) -> str | None:
    """The report-header line for an interpreter running without the GIL, else ``None``.

    ``gil_enabled`` is what ``sys._is_gil_enabled()`` returned; ``None`` where there is no
    such function (before Python 3.13: always a GIL).
    """
    return _NO_GIL_NOTE if gil_enabled is False else None


def gil_header() -> list[str]:
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    note = _no_gil_note(None if is_gil_enabled is None else bool(is_gil_enabled()))
    return [] if note is None else [note]


def detectors_header(detectors: list[str]) -> list[str]:
    """``pytest-netthreads: <detectors>; patched: <what> (by <whom>)``, or nothing when no
    detector is on: what a bug report about a run needs to know."""
    if not detectors:
        return []
    by: dict[str, list[str]] = {}
    for applied in patching.active():
        by.setdefault(applied.by, []).append(applied.describe())
    patched = "; ".join(f"{', '.join(names)} (by {who})" for who, names in by.items())
    return [f"pytest-netthreads: {', '.join(detectors)}; patched: {patched or 'nothing'}"]


# pytest-run-parallel runs each test body in several threads at once, all sharing one value
# of each fixture. These fixtures cannot be shared so: ``socket_faults`` patches the socket
# methods for the whole process and keeps one rule list and log, so every thread's
# connections would get every thread's rules. That plugin reads its ini list
# ``thread_unsafe_fixtures`` once, in its ``pytest_configure``; this runs before it
# (tryfirst) and adds ours, so a test using one runs in a single thread.
_THREAD_UNSAFE_FIXTURES = ("socket_faults",)


def declare_thread_unsafe_fixtures(config: pytest.Config) -> None:
    try:
        declared = config.getini("thread_unsafe_fixtures")
    except ValueError:  # no such ini key: pytest-run-parallel is not installed
        return
    for name in _THREAD_UNSAFE_FIXTURES:
        if name not in declared:
            config.addinivalue_line("thread_unsafe_fixtures", name)
