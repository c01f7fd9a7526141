"""``--leak-baseline=FILE`` and ``--leak-baseline-update``: known leaks do not fail.

Every process (each xdist worker too) reads the file and decides, leak by leak, whether it
is known (:meth:`LeakBaseline.known`). What each test found travels to the controller on the
test's teardown report (``report.netthreads_baseline``, a list of ``[kind, owner, name,
site]``, which xdist carries with the report), and only the controller, which saw every
test, lists the stale entries and (``--leak-baseline-update``) writes the file.
"""

from __future__ import annotations

import os

import pytest

from ..detect.findings import Baseline, BaselineEntry, BaselineError
from . import _config
from ._summary import summary

_ATTRIBUTE = "netthreads_baseline"


def add_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    group.addoption(
        "--leak-baseline",
        metavar="FILE",
        default=None,
        help="known thread and socket leaks (a text file, one a line): those do not fail "
        "their test, only new ones do; stale lines are listed (ini: leak_baseline, relative "
        "to the rootdir)",
    )
    group.addoption(
        "--leak-baseline-update",
        action="store_true",
        default=None,
        help="write every leak found to the --leak-baseline file (keeping the lines of tests "
        "that did not run) instead of failing (ini: leak_baseline_update)",
    )
    parser.addini("leak_baseline", "like --leak-baseline (a file, relative to the rootdir)")
    parser.addini("leak_baseline_update", "like --leak-baseline-update", type="bool", default=False)


class LeakBaseline:
    """The baseline of one process: what is known, and what this test found."""

    def __init__(self, path: str, baseline: Baseline, *, update: bool) -> None:
        self.path = path
        self.baseline = baseline
        self.update = update
        self._pending: list[list[str]] = []

    def known(self, finding: BaselineEntry) -> bool:
        """Whether ``finding`` does not fail its test: the baseline lists it, or it is being
        recorded (``--leak-baseline-update``). Noted for the controller either way."""
        self._pending.append([finding.kind, finding.owner, finding.name, finding.site])
        return self.update or self.baseline.match(finding) is not None

    def attach(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Hand what this test found to the controller, on its teardown report."""
        if self._pending:
            setattr(report, _ATTRIBUTE, self._pending)
            self._pending = []

    def header(self) -> str:
        update = ", updating it" if self.update else ""
        return f"--leak-baseline={self.path} ({len(self.baseline.entries)} entries{update})"


def configure(config: pytest.Config) -> LeakBaseline | None:
    """Read the baseline (``None`` without ``--leak-baseline``); on the controller, also
    register what lists its stale lines and writes it.

    Raises:
        pytest.UsageError: ``--leak-baseline-update`` without a file, or a file that is no
            baseline (naming its line).
    """
    path = _config.path(config, "leak_baseline")
    update = _config.flag(config, "leak_baseline_update")
    if path is None:
        if update:
            raise pytest.UsageError(
                "--leak-baseline-update (ini leak_baseline_update) needs the file: "
                "--leak-baseline=FILE (ini leak_baseline)"
            )
        return None
    if os.path.isdir(path):
        raise pytest.UsageError(f"--leak-baseline / ini leak_baseline: {path} is a directory")
    try:
        baseline = Baseline.read(path)
    except (BaselineError, OSError, UnicodeDecodeError) as exc:
        raise pytest.UsageError(f"--leak-baseline / ini leak_baseline: {exc}") from None
    state = LeakBaseline(path, baseline, update=update)
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        config.pluginmanager.register(_BaselineController(config, state), "netthreads-baseline")
    return state


def _owner_ran(owner: str, ran: set[str]) -> bool:
    """Whether ``owner`` (a node id, or a wider fixture's label ending in ``(node id)``)
    was run this time, so that an entry of it no leak matched is stale."""
    if owner in ran:
        return True
    if "-scoped fixture " not in owner or not owner.endswith(")"):
        return False
    where = owner.rsplit(" (", 1)[-1][:-1]
    if where == "the session":
        return bool(ran)
    return any(nodeid.startswith((f"{where}::", f"{where}/")) for nodeid in ran)


class _BaselineController:
    """On the controller: collect what every test found, list stale entries, write."""

    def __init__(self, config: pytest.Config, state: LeakBaseline) -> None:
        self.config = config
        self.state = state
        self.found: set[BaselineEntry] = set()
        self.ran: set[str] = set()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        self.ran.add(report.nodeid)
        for fields in getattr(report, _ATTRIBUTE, None) or ():
            self.found.add(BaselineEntry(*(str(field) for field in fields)))

    def pytest_sessionfinish(self) -> None:
        known = self.state.baseline
        matched = {known.match(finding) for finding in self.found}
        notes = summary(self.config).notes
        if self.state.update:
            kept = [e for e in known.entries if not _owner_ran(e.owner, self.ran)]
            written = Baseline([*kept, *self.found])
            try:
                written.write(self.state.path)
            except OSError as exc:
                notes.append(f"leak baseline NOT written: {exc}")
                return
            notes.append(
                f"leak baseline written: {self.state.path} ({len(written.entries)} entries)"
            )
            return
        stale = [
            entry
            for entry in known.entries
            if entry not in matched and _owner_ran(entry.owner, self.ran)
        ]
        if stale:
            notes.append(
                f"stale leak baseline entries (no leak matched them; remove them from "
                f"{self.state.path}): {len(stale)}"
            )
            notes.extend(f"  {entry.line()}" for entry in stale)
