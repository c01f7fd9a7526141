"""``--deadlock-timeout`` and ``--lock-order-check``: tracked locks, the hang watchdog, reports."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from .._runtime import values
from ..detect.deadlock import DeadlockDetector, DeadlockError, HangError
from ..detect.lockorder import LockOrderChecker
from . import _config
from ._summary import WARNED, deadlock_line, first_line, record, summary, warn

if TYPE_CHECKING:
    from ..detect.deadlock import DeadlockReport
    from ..detect.lockorder import LockOrderReport

_DEADLOCK_PLUGIN_NAME = "netthreads-deadlock"
PHASES = ("setup", "call", "teardown")
_OPTION_SOURCE = "--deadlock-timeout"
# Each phase's deadline (None: none) and what set it, for the hang report.
Deadlines = dict[str, tuple[float | None, str]]
# A bad deadlock_timeout marker, found by the setup wrapper, raised by a plain setup hook.
_MARKER_ERROR = pytest.StashKey[BaseException]()
# The test's deadlines, from its marker (else the options'), found at setup.
_DEADLINES = pytest.StashKey[Deadlines]()


def add_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    group.addoption(
        "--deadlock-timeout",
        metavar="SECONDS",
        default=None,
        help="track locks and joins: fail a test the moment its threads deadlock (a wait-for "
        "cycle), or that is still running after SECONDS (0: cycles only), with every "
        "thread's stack (ini: deadlock_timeout)",
    )
    group.addoption(
        "--lock-order-check",
        action="store_true",
        default=None,
        help="fail a test that takes locks in an order inverse to an order seen before "
        "(a potential deadlock, even if none happened) (ini: lock_order_check)",
    )
    group.addoption(
        "--lock-order-level",
        metavar="warn|fail",
        default=None,
        help="what a lock-order inversion does: fail its test (default) or only warn "
        "(NetthreadsWarning and the summary) (ini: lock_order_level)",
    )
    for phase in PHASES:
        group.addoption(
            f"--deadlock-timeout-{phase}",
            metavar="SECONDS",
            default=None,
            help=f"the deadline of the {phase} phase of each test (0: none), instead of "
            f"--deadlock-timeout's; also turns the detector on "
            f"(ini: deadlock_timeout_{phase})",
        )
    parser.addini("deadlock_timeout", "like --deadlock-timeout (seconds)", default=None)
    for phase in PHASES:
        parser.addini(
            f"deadlock_timeout_{phase}", f"like --deadlock-timeout-{phase} (seconds)", default=None
        )
    parser.addini("lock_order_check", "like --lock-order-check", type="bool", default=False)
    parser.addini("lock_order_level", "like --lock-order-level (warn or fail)", default=None)


def configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "deadlock_timeout(seconds=None, *, setup=None, call=None, teardown=None): fail this "
        "test if a phase (setup, call, teardown) is still running after its seconds (`seconds` "
        "for each phase not given; 0: wait-for cycles only); turns the deadlock detector on "
        "if it is off",
    )
    timeout = _config.seconds(config, "deadlock_timeout")
    deadlines: Deadlines = {}
    for phase in PHASES:
        value = _config.seconds(config, f"deadlock_timeout_{phase}")
        if value is None:
            deadlines[phase] = (timeout, _OPTION_SOURCE)
        else:
            deadlines[phase] = (value, f"{_OPTION_SOURCE}-{phase}")
    deadlock = any(value is not None for value, _ in deadlines.values())
    lock_order = _config.flag(config, "lock_order_check")
    lock_order_level = _config.level(config, "lock_order_level")
    if not deadlock and not lock_order:
        # Off: only look, once at collection, for a deadlock_timeout marker.
        config.pluginmanager.register(
            _DeadlockMarkerProbe(config, deadlines), _DEADLOCK_PLUGIN_NAME
        )
        return
    plugin = _start_deadlock_plugin(config, deadlines, deadlock=deadlock, lock_order=lock_order)
    plugin.lock_order_level = lock_order_level


def _start_deadlock_plugin(
    config: pytest.Config, deadlines: Deadlines, *, deadlock: bool, lock_order: bool
) -> _DeadlockPlugin:
    plugin = _DeadlockPlugin(config, deadlines, deadlock=deadlock, lock_order=lock_order)
    if config.pluginmanager.get_plugin(_DEADLOCK_PLUGIN_NAME) is not None:
        config.pluginmanager.unregister(name=_DEADLOCK_PLUGIN_NAME)
    config.pluginmanager.register(plugin, _DEADLOCK_PLUGIN_NAME)
    plugin.start()
    config.add_cleanup(plugin.stop)
    return plugin


def header(config: pytest.Config) -> list[str]:
    """What the lock detectors are, for the report header (nothing when they are off)."""
    plugin = config.pluginmanager.get_plugin(_DEADLOCK_PLUGIN_NAME)
    if not isinstance(plugin, _DeadlockPlugin):
        return []
    on = []
    if plugin.deadlock:
        for timeout, source in plugin.deadlines.values():
            shown = f"{source}={timeout or 0:g}"
            if shown not in on:
                on.append(shown)
    if plugin.checker is not None:
        on.append("--lock-order-check")
        if plugin.lock_order_level == "warn":
            on.append("--lock-order-level=warn")
    return on


class _DeadlockMarkerProbe:
    def __init__(self, config: pytest.Config, deadlines: Deadlines) -> None:
        self.config = config
        self.deadlines = deadlines

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if any(item.get_closest_marker("deadlock_timeout") for item in items):
            _start_deadlock_plugin(self.config, self.deadlines, deadlock=True, lock_order=False)


class _DeadlockPlugin:
    """The hooks of ``--deadlock-timeout`` / ``--lock-order-check`` (registered when on)."""

    def __init__(
        self, config: pytest.Config, deadlines: Deadlines, *, deadlock: bool, lock_order: bool
    ) -> None:
        self.config = config
        self.deadlines = deadlines
        self.deadlock = deadlock
        self._debugging = False  # a debugger ran in the current test: no deadline any more
        self.detector: DeadlockDetector | None = None
        self.checker = LockOrderChecker() if lock_order else None
        self._stderr_fd = -1
        self._failures: list[str] = []  # reports the default hook implementations took
        self.lock_order_level = "fail"  # --lock-order-level

    def _new_detector(self, kill_grace: float) -> DeadlockDetector:
        # The process watchdog writes to the real stderr: a copy of it taken outside the
        # capture (pytest's fd capture replaces descriptor 2 during collection and tests).
        capman = self.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            stderr_fd = os.dup(2)
        try:
            detector = DeadlockDetector(
                kill_grace=kill_grace, before_kill=self._release_stderr, stderr_fd=stderr_fd
            )
            detector.start()  # the process watchdog duplicates stderr_fd when it starts
        except BaseException:
            os.close(stderr_fd)
            raise
        self._stderr_fd = stderr_fd
        return detector

    def start(self) -> None:
        if self.checker is not None:
            self.checker.start()
        if self.deadlock:
            longest = max(timeout or 0.0 for timeout, _ in self.deadlines.values())
            self.detector = self._new_detector(max(5.0, longest))

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # --lock-order-check alone: a deadlock_timeout marker still turns the detector on.
        if self.detector is None and any(
            item.get_closest_marker("deadlock_timeout") for item in items
        ):
            self.detector = self._new_detector(5.0)

    def stop(self) -> None:
        if self.detector is not None:
            self.detector.stop()
            os.close(self._stderr_fd)
        if self.checker is not None:
            self.checker.stop()

    def _release_stderr(self) -> None:
        # The last-resort message must reach the real stderr, not the test's capture.
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.suspend_global_capture(in_=False)

    def _deadlines_for(self, item: pytest.Item) -> Deadlines:
        """The test's deadline for each phase (``None``: none) and what set it.

        A ``deadlock_timeout`` marker's keyword for a phase wins, then its seconds, then
        ``--deadlock-timeout-<phase>``, then ``--deadlock-timeout``.
        """
        marker = item.get_closest_marker("deadlock_timeout")
        if marker is None:
            return self.deadlines
        args = [repr(a) for a in marker.args] + [f"{k}={v!r}" for k, v in marker.kwargs.items()]
        source = f"@pytest.mark.deadlock_timeout({', '.join(args)})"
        given = {"seconds": marker.args[0]} if len(marker.args) == 1 else {}
        if (
            len(marker.args) > 1
            or not marker.args + tuple(marker.kwargs)
            or set(marker.kwargs) - {"seconds", *PHASES}
            or (given and "seconds" in marker.kwargs)
        ):
            raise TypeError(
                f"{source}: deadlock_timeout(seconds=None, *, setup=None, call=None, "
                "teardown=None) takes the seconds (the deadline of each phase) and/or a "
                f"deadline per phase, got args={marker.args!r} kwargs={marker.kwargs!r}"
            )
        given.update(marker.kwargs)
        checked = {
            key: values.seconds(value, f"{source}: {key}", maximum=values.MAX_TIMEOUT)
            for key, value in given.items()
        }
        deadlines = dict(self.deadlines)
        for phase in PHASES:
            for key in (phase, "seconds"):
                if key in checked:
                    deadlines[phase] = (checked[key], source)
                    break
        return deadlines

    def _collect(self, item: pytest.Item | None) -> str | None:
        """Hand the pending reports to the hooks; the failure message, if any is left."""
        detector, checker = self.detector, self.checker
        if not (
            self._failures
            or (detector is not None and detector.has_reports())
            or (checker is not None and checker.has_reports())
        ):
            return None  # after every phase of every test: nothing found, nothing to do
        hook = self.config.hook
        failures: list[str] = []
        reports: list[tuple[Any, Any]] = []
        if self.detector is not None:
            for report in self.detector.take_reports():
                report.join_threads(2.0)
                reports.append((hook.pytest_netthreads_deadlock_report, report))
        if self.checker is not None:
            reports += [
                (hook.pytest_netthreads_lock_order_report, r) for r in self.checker.take_reports()
            ]
        for caller, report in reports:
            caller(config=self.config, item=item, report=report)
        failures, self._failures = self._failures, []
        return "\n".join(failures) if failures else None

    # The default implementations (trylast): the report fails the phase, after every hook
    # had its say (as the leak checks' defaults do).
    @pytest.hookimpl(trylast=True)
    def pytest_netthreads_deadlock_report(
        self, item: pytest.Item | None, report: DeadlockReport
    ) -> object:
        kind = "deadlock" if report.kind == "cycle" else "hang"
        return self._default_report(item, report.text, kind, deadlock_line(report))

    @pytest.hookimpl(trylast=True)
    def pytest_netthreads_lock_order_report(
        self, item: pytest.Item | None, report: LockOrderReport
    ) -> object:
        line = first_line(report.text)
        if item is not None and self.lock_order_level == "warn":
            record(item, "lock_order", WARNED + line)
            item.add_report_section("call", "netthreads (warn level)", report.text)
            warn(item, f"lock-order inversion (--lock-order-level=warn): {line}")
            return True
        return self._default_report(item, report.text, "lock_order", line)

    def _default_report(self, item: pytest.Item | None, text: str, kind: str, line: str) -> object:
        if item is None:
            summary(self.config).outside.append(text)
        else:
            record(item, kind, line)
            self._failures.append(text)
        return True

    def _watched(self, item: pytest.Item, phase: str) -> Generator[None, object, object]:
        """Watch ``phase`` of ``item`` with its own deadline (teardown too, whatever the call
        did: a teardown that hangs after a failed or hung call is still caught); then hand
        what was found to the hooks and fail the phase with it. Our report replaces the
        interrupt (which only repeats it); an exception of another kind (e.g. the aborted
        threads' errors turned into errors by -W error) is named in it."""
        detector = self.detector
        if detector is not None and not self._debugging:
            timeout, source = item.stash.get(_DEADLINES, self.deadlines)[phase]
            detector._arm(item.nodeid, timeout, None, source, phase)  # checked: the options'
            # and the markers' deadlines are validated where they are read
        try:
            try:
                result = yield
            except BaseException as exc:
                failure = self._collect(item)
                if failure is None:
                    raise
                if not isinstance(exc, (DeadlockError, HangError)):
                    first = (str(exc).splitlines() or [""])[0]
                    failure += f"\n(the phase also raised {type(exc).__name__}: {first})"
                raise pytest.fail.Exception(failure, pytrace=False) from None
            failure = self._collect(item)
            if failure is not None:
                pytest.fail(failure, pytrace=False)
            return result
        finally:
            if self.detector is not None:
                # After setup and call the process watchdog keeps its deadline until the next
                # phase's replaces it (a lock and a page write fewer); after teardown, off.
                self.detector._disarm(phase == "teardown")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, object, object]:
        self._debugging = False
        if self.detector is not None:
            try:
                item.stash[_DEADLINES] = self._deadlines_for(item)
            except (TypeError, ValueError) as exc:
                # Raised by the plain hook below, inside every wrapper: raising here, before
                # other plugins' setup wrappers ran, would break their teardown.
                item.stash[_MARKER_ERROR] = exc
        return (yield from self._watched(item, "setup"))

    @pytest.hookimpl(tryfirst=True, specname="pytest_runtest_setup")
    def pytest_runtest_setup_marker_error(self, item: pytest.Item) -> None:
        exc = item.stash.get(_MARKER_ERROR, None)
        if exc is not None:
            del item.stash[_MARKER_ERROR]
            # The message says it all: no traceback through the plugin's frames.
            pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)

    # A debugger stops the clock: the deadline (and the interrupt) would hit the debugging
    # session. As pytest's faulthandler_timeout and pytest-timeout do, the test is not
    # watched again after a debugger started in it (cycles among other threads still are).
    @pytest.hookimpl(tryfirst=True)
    def pytest_enter_pdb(self) -> None:
        self._debugging = True
        if self.detector is not None:
            self.detector.disarm()

    @pytest.hookimpl(tryfirst=True)
    def pytest_exception_interact(self) -> None:
        if self.config.getoption("usepdb", False):
            self._debugging = True  # --pdb: post-mortem debugging follows
            if self.detector is not None:
                self.detector.disarm()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        return (yield from self._watched(item, "call"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        return (yield from self._watched(item, "teardown"))

    @pytest.hookimpl(tryfirst=True)
    def pytest_terminal_summary(self) -> None:
        self._collect(None)  # what is left goes to the one summary (printed after this)
