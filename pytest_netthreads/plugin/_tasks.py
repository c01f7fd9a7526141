"""``--task-leak-check``: asyncio tasks a test created and left pending."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

from ..detect.tasks import TaskLeakChecker, format_task_leaks
from . import _config
from ._leaks import add_note, allowed_patterns
from ._summary import WARNED, record, warn

if TYPE_CHECKING:
    from ..detect.tasks import LeakedTask

_TASK_PLUGIN_NAME = "netthreads-task-leak"
_TASK_OWNER = pytest.StashKey["_TaskOwner"]()


def add_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    group.addoption(
        "--task-leak-check",
        action="store_true",
        default=None,
        help="fail a test (at teardown) whose asyncio tasks were still pending when their "
        "event loop began closing (asyncio.run, pytest-asyncio, anyio) or at its teardown, "
        "with where each was created and its await chain (ini: task_leak_check)",
    )
    group.addoption(
        "--task-leak-level",
        metavar="warn|fail",
        default=None,
        help="what an asyncio task leak does: fail its test (default) or only warn "
        "(NetthreadsWarning and the summary) (ini: task_leak_level)",
    )
    parser.addini("task_leak_check", "like --task-leak-check", type="bool", default=False)
    parser.addini("task_leak_level", "like --task-leak-level (warn or fail)", default=None)


def configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_task_leak(*patterns): with --task-leak-check, do not report the asyncio tasks "
        "this test (or module/class, as pytestmark) leaves pending; with patterns (regexes, "
        "re.search), only those whose name, coroutine or creation site matches one",
    )
    level = _config.level(config, "task_leak_level")  # a bad value fails even when off
    if not _config.flag(config, "task_leak_check"):
        return
    checker = TaskLeakChecker().start()
    config.add_cleanup(checker.stop)
    plugin = _TaskLeakPlugin(config, checker)
    plugin.level = level
    config.pluginmanager.register(plugin, _TASK_PLUGIN_NAME)


def header(config: pytest.Config) -> list[str]:
    """``--task-leak-check`` when it is on, for the report header."""
    plugin = config.pluginmanager.get_plugin(_TASK_PLUGIN_NAME)
    if not isinstance(plugin, _TaskLeakPlugin):
        return []
    return ["--task-leak-check"] + (["--task-leak-level=warn"] if plugin.level == "warn" else [])


class _TaskOwner:
    """The test that created a task (one object per run of the test)."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __str__(self) -> str:
        return self.label


def task_line(leak: LeakedTask) -> str:
    """How a task is shown in the summary, and what the marker's patterns search."""
    return f"{leak.description}, created at {leak.created_at}"


class _TaskLeakPlugin:
    """The hooks of ``--task-leak-check`` (registered only when it is on)."""

    def __init__(self, config: pytest.Config, checker: TaskLeakChecker) -> None:
        self.config = config
        self.checker = checker
        self.level = "fail"  # --task-leak-level
        self._reports: list[str] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        allowed_patterns(item, "allow_task_leak")  # a bad pattern fails the setup
        owner = item.stash[_TASK_OWNER] = _TaskOwner(item.nodeid)
        self.checker.set_owner(owner)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        # What a wider-scoped fixture starts outlives the test on purpose: not the test's.
        if fixturedef.scope == "function":
            return (yield)
        previous = self.checker.set_owner(None)
        try:
            return (yield)
        finally:
            self.checker.set_owner(previous)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        # tryfirst: the check runs after every other teardown (the event loop fixtures').
        try:
            result = yield
        except BaseException as exc:
            self._check(item, in_flight=exc)
            raise
        self._check(item, in_flight=None)
        return result

    def _check(self, item: pytest.Item, in_flight: BaseException | None) -> None:
        self.checker.set_owner(None)
        owner = item.stash.get(_TASK_OWNER, None)
        if owner is None:
            return
        self._check_owner(item, owner)
        reports, self._reports = self._reports, []
        if not reports:
            return
        text = "\n\n".join(reports)
        if in_flight is not None and add_note(in_flight, text):
            return
        pytest.fail(text, pytrace=False)

    def _check_owner(self, item: pytest.Item, owner: _TaskOwner) -> None:
        # A function of its own: the leaked tasks are referenced by nothing once it returns.
        if not self.checker.has_records(owner):
            return
        patterns = allowed_patterns(item, "allow_task_leak")
        if patterns is None:
            self.checker.check(owner)
            return
        leaks = self.checker.check(
            owner, allow=lambda leak: any(p.search(task_line(leak)) for p in patterns)
        )
        if leaks:
            self.config.hook.pytest_netthreads_task_leaks(
                config=self.config, node=item, owner=owner.label, leaks=leaks
            )

    @pytest.hookimpl(trylast=True)
    def pytest_netthreads_task_leaks(
        self, node: pytest.Item, owner: str, leaks: list[LeakedTask]
    ) -> object:
        if not leaks:
            return True
        if self.level == "warn":
            node.add_report_section("teardown", "netthreads (warn level)",
                                    format_task_leaks(owner, leaks))
            for leak in leaks:
                record(node, "task_leak", WARNED + task_line(leak))
                warn(node, f"asyncio task leak (--task-leak-level=warn): {task_line(leak)}")
            return True
        self._reports.append(format_task_leaks(owner, leaks))
        for leak in leaks:
            record(node, "task_leak", task_line(leak))
        return True
