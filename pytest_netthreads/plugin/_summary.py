"""One summary of the run: what the detectors and faults found, test by test.

What the detectors and faults find in a test travels as the test's ``user_properties``
(named ``netthreads_<kind>``): JUnit XML writes them as ``<property>`` elements, xdist
carries them from the workers, and :class:`_Summary` reads them from the teardown reports.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..detect.deadlock import DeadlockReport

_PROPERTY_PREFIX = "netthreads_"
_SUMMARY_PLUGIN_NAME = "netthreads-summary"
_SUMMARY_KINDS = {
    "thread_leak": "thread leaks",
    "socket_leak": "socket leaks",
    "task_leak": "asyncio task leaks",
    "deadlock": "deadlocks (wait-for cycles)",
    "hang": "hangs (still running at the deadline)",
    "lock_order": "lock-order inversions (potential deadlocks)",
    "fault_seed": "fault seeds of failed tests (replay with --fault-seed)",
}


def record(item: pytest.Item, kind: str, value: str) -> None:
    """Record a finding on ``item``: a JUnit XML property and a line of the summary."""
    assert kind in _SUMMARY_KINDS, kind
    entry = (_PROPERTY_PREFIX + kind, value)
    if entry not in item.user_properties:
        item.user_properties.append(entry)


class _Summary:
    """Collects the findings of every test, and prints one section at the end of the run."""

    def __init__(self) -> None:
        self.found: dict[str, list[tuple[str, str]]] = {kind: [] for kind in _SUMMARY_KINDS}
        self.outside: list[str] = []  # full reports from outside any test

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":  # the teardown report carries all three phases'
            return
        for name, value in report.user_properties:
            if isinstance(name, str) and name.startswith(_PROPERTY_PREFIX):
                kind = name[len(_PROPERTY_PREFIX) :]
                if kind in self.found:
                    self.found[kind].append((report.nodeid, str(value)))

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not (self.outside or any(self.found.values())):
            return
        bad = self.outside or any(v for k, v in self.found.items() if k != "fault_seed")
        terminalreporter.section("pytest-netthreads", red=bool(bad), yellow=not bad)
        root = f"{terminalreporter.config.rootpath}{os.sep}"  # paths shown relative to it
        for kind, title in _SUMMARY_KINDS.items():
            entries = self.found[kind]
            if not entries:
                continue
            terminalreporter.write_line(f"{title}: {len(entries)}")
            for nodeid, value in entries:
                terminalreporter.write_line(f"  {nodeid}: {value.replace(root, '')}")
        if self.outside:
            terminalreporter.write_line(f"found outside any test: {len(self.outside)}")
            for text in self.outside:
                terminalreporter.write_line(text)


def configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Summary(), _SUMMARY_PLUGIN_NAME)


def summary(config: pytest.Config) -> _Summary:
    summary = config.pluginmanager.get_plugin(_SUMMARY_PLUGIN_NAME)
    assert isinstance(summary, _Summary)
    return summary


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def deadlock_line(report: DeadlockReport) -> str:
    if report.kind == "cycle":  # "thread 'a' waits for <lock created at f:l>", one per thread
        waits = [ln.strip() for ln in report.text.splitlines() if ln.startswith("  thread ")]
        return f"wait-for cycle of {len(waits)} threads: " + "; ".join(waits)
    line = first_line(report.text)
    if report.label:
        # "Hang: <test> hung in call: still..." -> "Hang in call: still..."
        line = line.replace(f": {report.label} hung in ", " in ", 1)
        line = line.replace(f" {report.label} ", " ", 1)
    return line
