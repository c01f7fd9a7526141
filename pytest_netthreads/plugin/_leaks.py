"""``--thread-leak-check`` and ``--socket-leak-check``: who started what, checked at teardown."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from ..detect.findings import BaselineEntry, normalise_name, short_site
from ..detect.socketleak import format_socket_leaks
from ..detect.threadleak import (
    IDLE_WORKER_CACHES,
    ThreadLeakChecker,
    compile_patterns,
    format_thread_leaks,
)
from . import _baseline, _config
from ._summary import BASELINED, WARNED, record, warn

if TYPE_CHECKING:
    from ..detect.socketleak import LeakedSocket
    from ..detect.threadleak import LeakedThread

_LEAK_OWNER = pytest.StashKey["_LeakOwner"]()
# The summary lines of the leaks that failed a test's teardown (to tell an xfail test's).
_FAILED = pytest.StashKey[list[str]]()


def add_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    group.addoption(
        "--thread-leak-check",
        action="store_true",
        default=None,
        help="fail a test (at teardown) that leaves threads running; module/class/session-"
        "scoped fixtures are checked when their scope ends (ini: thread_leak_check)",
    )
    group.addoption(
        "--thread-leak-grace",
        metavar="SECONDS",
        default=None,
        help="how long to wait (joining) for a test's threads to finish before calling them "
        "(or sockets they still have open) leaked; default 1.0 (ini: thread_leak_grace)",
    )
    group.addoption(
        "--socket-leak-check",
        action="store_true",
        default=None,
        help="fail a test (at teardown) that leaves sockets it created open "
        "(ini: socket_leak_check)",
    )
    group.addoption(
        "--socket-leak-collected",
        action="store_true",
        default=None,
        help="with the socket leak check (turned on by this too), also fail a test whose "
        "sockets were garbage-collected without being closed, naming where each was created "
        "(ini: socket_leak_collected)",
    )
    group.addoption(
        "--thread-leak-level",
        metavar="warn|fail",
        default=None,
        help="what a leaked thread does: fail its test (default) or only warn "
        "(NetthreadsWarning and the summary) (ini: thread_leak_level)",
    )
    group.addoption(
        "--socket-leak-level",
        metavar="warn|fail",
        default=None,
        help="what a leaked socket does: fail its test (default) or only warn "
        "(ini: socket_leak_level)",
    )
    _baseline.add_options(parser, group)
    parser.addini("thread_leak_level", "like --thread-leak-level (warn or fail)", default=None)
    parser.addini("socket_leak_level", "like --socket-leak-level (warn or fail)", default=None)
    parser.addini(
        "thread_leak_default_ignore",
        "ignore the idle worker threads libraries keep on purpose (trio's 'Trio thread N'); "
        "false: report them too",
        type="bool",
        default=True,
    )
    parser.addini("thread_leak_check", "like --thread-leak-check", type="bool", default=False)
    parser.addini("thread_leak_grace", "like --thread-leak-grace (seconds)", default="1.0")
    parser.addini(
        "thread_leak_ignore",
        "regexes, one a line: threads whose name matches one (re.search) are never reported",
        type="linelist",
        default=[],
    )
    parser.addini("socket_leak_check", "like --socket-leak-check", type="bool", default=False)
    parser.addini(
        "socket_leak_collected", "like --socket-leak-collected", type="bool", default=False
    )
    parser.addini(
        "socket_leak_ignore",
        "regexes, one a line: sockets whose description or creation site (as the report shows "
        "them) matches one (re.search) are never reported",
        type="linelist",
        default=[],
    )


def configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_thread_leak(*name_patterns): with --thread-leak-check, do not report the "
        "threads this test (or module/class, as pytestmark) leaves running; with patterns "
        "(regexes, re.search), only the threads whose name matches one",
    )
    config.addinivalue_line(
        "markers",
        "allow_socket_leak(*patterns): with --socket-leak-check, do not report the sockets "
        "this test (or module/class, as pytestmark) leaves open; with patterns (regexes, "
        "re.search), only those whose description or creation site matches one",
    )
    threads = _config.flag(config, "thread_leak_check")
    collected = _config.flag(config, "socket_leak_collected")
    sockets = collected or _config.flag(config, "socket_leak_check")
    if not (threads or sockets):
        return
    grace = _config.seconds(config, "thread_leak_grace")
    if grace is None:
        grace = 1.0
    levels = {kind: _config.level(config, f"{kind}_leak_level") for kind in ("thread", "socket")}
    baseline = _baseline.configure(config)
    try:
        ignore = compile_patterns(config.getini("thread_leak_ignore"), "thread_leak_ignore")
        if config.getini("thread_leak_default_ignore"):
            ignore = compile_patterns([p for p, _ in IDLE_WORKER_CACHES], "default") + ignore
        ignore_sockets = compile_patterns(
            config.getini("socket_leak_ignore"), "socket_leak_ignore"
        )
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    checker = ThreadLeakChecker(grace=grace, sockets=sockets, collected=collected)
    checker.ignore = ignore
    checker.root = str(config.rootpath)
    checker.start()
    config.add_cleanup(checker.stop)
    plugin = _ThreadLeakPlugin(config, checker, threads=threads, sockets=sockets)
    plugin.ignore_sockets = ignore_sockets
    plugin.levels = levels
    plugin.baseline = baseline
    config.pluginmanager.register(plugin, "netthreads-thread-leak")


def header(config: pytest.Config) -> list[str]:
    """What the leak checks are, for the report header (nothing when they are off)."""
    plugin = config.pluginmanager.get_plugin("netthreads-thread-leak")
    if not isinstance(plugin, _ThreadLeakPlugin):
        return []
    on = [name for name, enabled in (("--thread-leak-check", plugin.threads),
                                      ("--socket-leak-check", plugin.sockets),
                                      ("--socket-leak-collected", plugin.checker.collected))
          if enabled]
    more = [f"--{kind}-leak-level=warn" for kind, lv in plugin.levels.items() if lv == "warn"]
    if plugin.baseline is not None:
        more.append(plugin.baseline.header())
    return [f"{', '.join(on)} (grace {plugin.checker.grace:g}s)", *more]


class _LeakOwner:
    """Who started a thread: a test, or one execution of a higher-scoped fixture."""

    __slots__ = ("label", "node")

    def __init__(self, label: str, node: pytest.Item | pytest.Collector | None) -> None:
        self.label = label
        self.node = node

    def __str__(self) -> str:
        return self.label


def allowed_patterns(
    node: pytest.Item | pytest.Collector | None, marker_name: str
) -> list[re.Pattern[str]] | None:
    """The patterns the ``marker_name`` markers on ``node`` (``allow_thread_leak``,
    ``allow_socket_leak``, ``allow_task_leak``) allow; ``None``: everything (a marker without
    patterns). A pattern that is not a str or not a valid regex is a usage error naming the
    marker and the test."""
    if node is None:
        return []
    patterns: list[str] = []
    for marker in node.iter_markers(marker_name):
        if not marker.args:
            return None
        patterns.extend(marker.args)
    try:
        return compile_patterns(patterns, f"@pytest.mark.{marker_name} on {node.nodeid}")
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None


def _socket_line(leak: LeakedSocket) -> str:
    """How a socket is shown in the summary, and what the socket patterns search."""
    return f"{leak.description}, created at {leak.created_at}"


class _ThreadLeakPlugin:
    """The hooks of ``--thread-leak-check`` / ``--socket-leak-check`` (registered only then)."""

    def __init__(
        self, config: pytest.Config, checker: ThreadLeakChecker, *, threads: bool, sockets: bool
    ) -> None:
        self.config = config
        self.checker = checker
        self.threads = threads
        self.sockets = sockets
        self._scope_owners: dict[object, _LeakOwner] = {}
        self._ended: list[_LeakOwner] = []
        self._reports: list[str] = []
        self._found: list[tuple[str, str]] = []  # (kind, summary line) for _record
        self._failed: list[str] = []  # summary lines of the leaks that fail the test
        # what a thread leak reported in full has in common with others, and its owner
        self._shown: dict[tuple[str, str, str | None], str] = {}
        self._warnings: list[tuple[str, str]] = []  # (summary lines, report) at warn level
        self.ignore_sockets: list[re.Pattern[str]] = []  # ini socket_leak_ignore
        self.levels = {"thread": "fail", "socket": "fail"}
        self.baseline: _baseline.LeakBaseline | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # A higher-scoped fixture finalized during this setup (a parametrized one replaced by
        # its next instance) is checked at this test's teardown: the test still runs.
        owner = item.stash[_LEAK_OWNER] = _LeakOwner(item.nodeid, item)
        self.checker.set_owner(owner)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        owner = item.stash.get(_LEAK_OWNER, None)
        owners = [owner] if owner is not None else []
        try:
            result = yield
        except BaseException as exc:
            self.checker.set_owner(None)
            self._check_owners(item, owners, in_flight=exc)
            raise
        self.checker.set_owner(None)
        self._check_owners(item, owners, in_flight=None)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        if fixturedef.scope == "function":
            return (yield)
        node = request.node
        where = node.nodeid or "the session"
        label = f"{fixturedef.scope}-scoped fixture {fixturedef.argname!r} ({where})"
        owner = _LeakOwner(label, node)
        self._scope_owners[fixturedef] = owner
        previous = self.checker.set_owner(owner)
        try:
            return (yield)
        finally:
            self.checker.set_owner(previous)

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[object]) -> None:
        owner = self._scope_owners.pop(fixturedef, None)
        if owner is not None and self.checker.has_records(owner):
            self._ended.append(owner)

    def _check_owners(
        self, item: pytest.Item, owners: list[_LeakOwner], in_flight: BaseException | None
    ) -> None:
        if self._ended:
            owners = owners + self._ended
            self._ended = []
        for owner in owners:
            self._check_owner(owner)
        found, self._found = self._found, []
        for kind, line in found:
            record(item, kind, line)
        warned, self._warnings = self._warnings, []
        for lines, report in warned:
            item.add_report_section("teardown", "netthreads (warn level)", report)
            warn(item, lines)
        reports, self._reports = self._reports, []
        if not reports:
            return
        failed, self._failed = self._failed, []
        item.stash[_FAILED] = failed
        text = "\n\n".join(reports)
        if in_flight is not None and add_note(in_flight, text):
            return  # the teardown's own error is kept; the leaks come after it
        pytest.fail(text, pytrace=False)

    def _check_owner(self, owner: _LeakOwner) -> None:
        # A function of its own: the leaked threads and sockets stay referenced by nothing
        # once it returns (not by the frames of the failure raised after it).
        if not self.checker.has_records(owner):
            return
        # With --socket-leak-check alone every thread is allowed, but still joined (up to
        # the grace) when a socket is open: an exiting thread may be what closes it.
        allow = allowed_patterns(owner.node, "allow_thread_leak") if self.threads else None
        threads, sockets = self.checker.check_all(owner, allow=allow)
        if sockets:
            allowed = allowed_patterns(owner.node, "allow_socket_leak")
            patterns = None if allowed is None else [*self.ignore_sockets, *allowed]
            sockets = [
                leak
                for leak in sockets
                if patterns is not None
                and not any(p.search(_socket_line(leak)) for p in patterns)
            ]
        hook = self.config.hook
        if threads:
            hook.pytest_netthreads_thread_leaks(
                config=self.config, node=owner.node, owner=owner.label, leaks=threads
            )
        if sockets:
            hook.pytest_netthreads_socket_leaks(
                config=self.config, node=owner.node, owner=owner.label, leaks=sockets
            )

    @pytest.hookimpl(trylast=True)
    def pytest_netthreads_thread_leaks(self, owner: str, leaks: list[LeakedThread]) -> object:
        def key(leak: LeakedThread) -> BaselineEntry:
            site = short_site(leak.started_at, self.checker.root)
            return BaselineEntry("thread", owner, normalise_name(leak.name), site)

        def report(some: list[LeakedThread]) -> str:
            shown_for = [self._shown.setdefault(leak.same_as(), owner) for leak in some]
            brief = [None if first == owner else first for first in shown_for]
            return format_thread_leaks(owner, some, self.checker.grace, shown_for=brief)

        self._handle("thread", leaks, key, lambda leak: _leak_line(owner, leak), report)
        return True

    @pytest.hookimpl(trylast=True)
    def pytest_netthreads_socket_leaks(self, owner: str, leaks: list[LeakedSocket]) -> object:
        def key(leak: LeakedSocket) -> BaselineEntry:
            site = short_site(leak.created_at, self.checker.root)
            return BaselineEntry("socket", owner, "", site)

        def line(leak: LeakedSocket) -> str:
            collected = "collected unclosed: " if leak.collected else ""
            by = f", created by {leak.created_by}" if leak.created_by else ""
            return f"{_by(owner)}{collected}{_socket_line(leak)}{by}"

        self._handle("socket", leaks, key, line, lambda some: format_socket_leaks(owner, some))
        return True

    def _handle(
        self,
        kind: str,
        leaks: list[Any],
        key: Callable[[Any], BaselineEntry],
        line: Callable[[Any], str],
        report: Callable[[list[Any]], str],
    ) -> None:
        """Sort ``leaks`` into those the baseline knows, those only warned about (the
        ``warn`` level) and those that fail the test; record each in the summary."""
        failing, warned = [], []
        for leak in leaks:
            if self.baseline is not None and self.baseline.known(key(leak)):
                self._found.append((f"{kind}_leak", BASELINED + line(leak)))
            elif self.levels[kind] == "warn":
                warned.append(leak)
                self._found.append((f"{kind}_leak", WARNED + line(leak)))
            else:
                failing.append(leak)
                self._found.append((f"{kind}_leak", line(leak)))
                self._failed.append(line(leak))
        if warned:
            lines = "\n".join(
                f"{kind} leak (--{kind}-leak-level=warn): {line(leak)}" for leak in warned
            )
            self._warnings.append((lines, report(warned)))
        if failing:
            self._reports.append(report(failing))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when == "teardown":
            failed = item.stash.get(_FAILED, None)
            if failed and getattr(report, "wasxfail", None) is not None:
                # pytest counts the failed teardown of an xfail test as one more "xfailed",
                # shown nowhere by default: say so in its report and as a warning.
                text = (
                    f"{len(failed)} leak(s) in a test marked xfail (counted as xfailed by "
                    "pytest, still a leak):\n" + "\n".join(failed)
                )
                report.sections.append(("netthreads: leaks in an xfail test", text))
                report.wasxfail = (
                    f"{report.wasxfail} [and {len(failed)} leak(s) at teardown: see the "
                    "pytest-netthreads summary]"
                ).lstrip()
                warn(item, f"{item.nodeid}: {text}")
            if self.baseline is not None:
                self.baseline.attach(item, report)
        return report


def add_note(exc: BaseException, text: str) -> bool:
    """``exc.add_note(text)``; on Python 3.10 the ``__notes__`` list that pytest shows too."""
    if hasattr(exc, "add_note"):
        exc.add_note(text)
        return True
    try:
        notes = list(getattr(exc, "__notes__", ()))
        exc.__notes__ = [*notes, text]  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return False
    return True


def _by(owner: str) -> str:
    # A test's own leaks are listed under its node id; a wider fixture's are named.
    return "" if "-scoped fixture " not in owner else f"[{owner}] "


def _leak_line(owner: str, leak: LeakedThread) -> str:
    daemon = ", daemon" if leak.daemon else ""
    by = f", started by {leak.started_by}" if leak.started_by else ""
    return (
        f"{_by(owner)}{leak.name!r} ({leak.target}{daemon}), started at {leak.started_at}{by}"
    )
