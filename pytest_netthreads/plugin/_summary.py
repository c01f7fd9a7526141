"""One summary of the run: what the detectors and faults found, test by test.

What the detectors and faults find in a test travels as the test's ``user_properties``
(named ``netthreads_<kind>``): JUnit XML writes them as ``<property>`` elements, xdist
carries them from the workers, and :class:`_Summary` reads them from the teardown reports.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import TYPE_CHECKING

import pytest

from ..detect.findings import NetthreadsWarning

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


WARNED = "[warn] "
"""The tag of a finding at the ``warn`` level (it did not fail its test)."""
BASELINED = "[baselined] "
"""The tag of a finding the leak baseline lists (it did not fail its test)."""
_TAGS = (WARNED, BASELINED)
_LISTED = 10  # tests listed under a finding that hit several
_GROUPED = ("thread_leak", "socket_leak")  # kinds whose findings alike are listed once


def record(item: pytest.Item, kind: str, value: str) -> None:
    """Record a finding on ``item``: a JUnit XML property and a line of the summary.

    ``value`` may start with a tag (:data:`WARNED`, :data:`BASELINED`): the finding did not
    fail the test.
    """
    assert kind in _SUMMARY_KINDS, kind
    entry = (_PROPERTY_PREFIX + kind, value)
    if entry not in item.user_properties:
        item.user_properties.append(entry)


_QUOTED = re.compile(r"'[^']*'")
_NUMBERS = re.compile(r"\d+")
_FD = re.compile(r"fd=\d+")
_PORT = re.compile(r"(?<=[\d\]]):\d+(?=[ ,)]|$)")  # 127.0.0.1:5000, [::1]:5000


def group_key(kind: str, value: str) -> str:
    """What identical findings share: a thread's name with its numbers as ``*``
    (``Thread-12 (worker)``, ``Thread-13 (worker)``), a socket's descriptor and ports."""
    if kind == "thread_leak":
        return _QUOTED.sub(lambda m: _NUMBERS.sub("*", m.group()), value)
    if kind == "socket_leak":
        return _PORT.sub(":*", _FD.sub("fd=*", value))
    return value


def warn(item: pytest.Item, text: str) -> None:
    """Issue a :class:`NetthreadsWarning` located at ``item``'s test function.

    Paths under the rootdir are shown relative to it. Always shown, once per call, and never
    turned into an error by ``-W error`` or ``filterwarnings = error``: the detector's level
    says what fails a test, and ``warn`` means it does not.
    """
    path, line, _ = item.location
    root = str(item.config.rootpath)
    filename = os.path.join(root, path)
    text = text.replace(root + os.sep, "")  # paths relative to the rootdir, as in the summary
    with warnings.catch_warnings():
        warnings.simplefilter("always", NetthreadsWarning)
        lineno = (line or 0) + 1
        warnings.warn_explicit(NetthreadsWarning(text), NetthreadsWarning, filename, lineno)


def _untagged(value: str) -> tuple[str, str]:
    for tag in _TAGS:
        if value.startswith(tag):
            return tag, value[len(tag) :]
    return "", value


class _Summary:
    """Collects the findings of every test, and prints one section at the end of the run."""

    def __init__(self) -> None:
        # kind -> (node id, value, whether the test was reported as xfailed)
        self.found: dict[str, list[tuple[str, str, bool]]] = {k: [] for k in _SUMMARY_KINDS}
        self.outside: list[str] = []  # full reports from outside any test
        self.notes: list[str] = []  # more lines for the section (stale baseline entries)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":  # the teardown report carries all three phases'
            return
        xfailed = getattr(report, "wasxfail", None) is not None
        for name, value in report.user_properties:
            if isinstance(name, str) and name.startswith(_PROPERTY_PREFIX):
                kind = name[len(_PROPERTY_PREFIX) :]
                if kind in self.found:
                    self.found[kind].append((report.nodeid, str(value), xfailed))

    def _bad(self) -> bool:
        return bool(self.outside) or any(
            not _untagged(value)[0]
            for kind, entries in self.found.items()
            if kind != "fault_seed"
            for _, value, _ in entries
        )

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not (self.outside or self.notes or any(self.found.values())):
            return
        bad = self._bad()
        terminalreporter.section("pytest-netthreads", red=bad, yellow=not bad)
        root = f"{terminalreporter.config.rootpath}{os.sep}"  # paths shown relative to it
        write = terminalreporter.write_line
        for kind, title in _SUMMARY_KINDS.items():
            entries = self.found[kind]
            if not entries:
                continue
            groups: dict[str, list[tuple[str, str, bool]]] = {}
            for i, entry in enumerate(entries):
                # Leaks alike are one bug; a hang's or a cycle's line says too little.
                key = group_key(kind, entry[1]) if kind in _GROUPED else str(i)
                groups.setdefault(key, []).append(entry)
            write(f"{title}: {len(entries)}{_counts(entries, len(groups))}")
            for key, hits in groups.items():
                if len(hits) == 1:
                    ((nodeid, value, xfailed),) = hits
                    shown = f"{nodeid} (xfailed)" if xfailed else nodeid
                    write(f"  {shown}: {value.replace(root, '')}")
                    continue
                write(f"  {key.replace(root, '')}: in {len(hits)} tests")
                for nodeid, _, xfailed in hits[:_LISTED]:
                    write(f"    {nodeid}{' (xfailed)' if xfailed else ''}")
                if len(hits) > _LISTED:
                    write(f"    ... and {len(hits) - _LISTED} more")
        for line in self.notes:
            write(line.replace(root, ""))
        if self.outside:
            write(f"found outside any test: {len(self.outside)}")
            for text in self.outside:
                write(text)


def _counts(entries: list[tuple[str, str, bool]], distinct: int) -> str:
    """`` (2 distinct; 1 warned, 3 baselined, 1 in xfailed tests)``, or nothing."""
    parts = []
    if distinct < len(entries):
        parts.append(f"{distinct} distinct")
    tags = [_untagged(value)[0] for _, value, _ in entries]
    more = [
        f"{tags.count(WARNED)} warned" if WARNED in tags else "",
        f"{tags.count(BASELINED)} baselined" if BASELINED in tags else "",
        f"{sum(x for _, _, x in entries)} in xfailed tests" if any(x for *_, x in entries) else "",
    ]
    more = [part for part in more if part]
    if more:
        parts.append(", ".join(more))
    return f" ({'; '.join(parts)})" if parts else ""


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
