"""The pytest entry point (``pytest11``): options, markers, fixtures and report wiring.

This is the only module of the package that imports pytest; everything it wires up is
usable without it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from . import handlers, hookspecs
from ._runtime.reactor import shutdown_reactor_if_idle
from .detect.deadlock import DeadlockDetector, DeadlockError, HangError
from .detect.lockorder import LockOrderChecker
from .detect.socketleak import format_socket_leaks
from .detect.threadleak import (
    ThreadLeakChecker,
    compile_patterns,
    format_thread_leaks,
    validate_grace,
)
from .faults import FaultProxy, ProxyError, SocketFaults
from .servers import ServerError, ThreadedServer
from .servers.factory import ServerFactory

if TYPE_CHECKING:
    import ssl

    from .detect.deadlock import DeadlockReport
    from .detect.lockorder import LockOrderReport
    from .detect.socketleak import LeakedSocket
    from .detect.threadleak import LeakedThread

# Servers started by a test's fixtures, checked for handler errors right after the call
# phase (so a handler error fails the test itself, not only its teardown).
_OWNED_SERVERS = pytest.StashKey[list[ThreadedServer]]()


# -- options, ini keys, markers ----------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netthreads", "pytest-netthreads: servers, faults, detectors")
    # Each feature adds its options (each mirrored by an ini key) with one call here.
    _add_tls_options(parser, group)
    _add_thread_leak_options(parser, group)
    _add_faults_options(parser, group)
    _add_deadlock_options(parser, group)
    del group


def pytest_configure(config: pytest.Config) -> None:
    # Each feature registers its markers here, and, only when it is switched on, an object
    # holding its hook implementations (config.pluginmanager.register), so that a feature
    # that is off costs nothing per test.
    _configure_summary(config)
    _configure_tls(config)
    _configure_thread_leak(config)
    _configure_faults(config)
    _configure_deadlock(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _interrupted
    del config
    _interrupted = False
    shutdown_reactor_if_idle()


# Set once the session was interrupted (Ctrl-C). pytest then tears the fixtures down in
# pytest_sessionfinish, where an exception is a crash (a traceback, exit status 1) rather
# than the usual "interrupted" (2): the fixtures print their servers' errors instead.
_interrupted = False


def pytest_keyboard_interrupt() -> None:
    global _interrupted
    _interrupted = True


def _print_after_interrupt(exc: BaseException) -> None:
    print(f"\npytest-netthreads: stopped after the interrupt: {type(exc).__name__}: {exc}",
          file=sys.stderr)


# -- report header: free-threaded builds ------------------------------------------------------

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


def pytest_report_header() -> list[str]:
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    note = _no_gil_note(None if is_gil_enabled is None else bool(is_gil_enabled()))
    return [] if note is None else [note]


# -- pytest-run-parallel ----------------------------------------------------------------------

# pytest-run-parallel runs each test body in several threads at once, all sharing one value
# of each fixture. These fixtures cannot be shared so: ``socket_faults`` patches the socket
# methods for the whole process and keeps one rule list and log, so every thread's
# connections would get every thread's rules. That plugin reads its ini list
# ``thread_unsafe_fixtures`` once, in its ``pytest_configure``; this runs before it
# (tryfirst) and adds ours, so a test using one runs in a single thread.
_THREAD_UNSAFE_FIXTURES = ("socket_faults",)


@pytest.hookimpl(tryfirst=True, specname="pytest_configure")
def pytest_configure_thread_unsafe_fixtures(config: pytest.Config) -> None:
    try:
        declared = config.getini("thread_unsafe_fixtures")
    except ValueError:  # no such ini key: pytest-run-parallel is not installed
        return
    for name in _THREAD_UNSAFE_FIXTURES:
        if name not in declared:
            config.addinivalue_line("thread_unsafe_fixtures", name)


# -- one summary of the run ------------------------------------------------------------------

# What the detectors and faults found in a test travels as the test's ``user_properties``
# (named ``netthreads_<kind>``): JUnit XML writes them as ``<property>`` elements, xdist
# carries them from the workers, and the summary below reads them from the teardown reports.
_PROPERTY_PREFIX = "netthreads_"
_SUMMARY_PLUGIN_NAME = "netthreads-summary"
_SUMMARY_KINDS = {
    "thread_leak": "thread leaks",
    "socket_leak": "socket leaks",
    "deadlock": "deadlocks (wait-for cycles)",
    "hang": "hangs (still running at the deadline)",
    "lock_order": "lock-order inversions (potential deadlocks)",
    "fault_seed": "fault seeds of failed tests (replay with --fault-seed)",
}


def _record(item: pytest.Item, kind: str, value: str) -> None:
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


def _configure_summary(config: pytest.Config) -> None:
    config.pluginmanager.register(_Summary(), _SUMMARY_PLUGIN_NAME)


def _summary(config: pytest.Config) -> _Summary:
    summary = config.pluginmanager.get_plugin(_SUMMARY_PLUGIN_NAME)
    assert isinstance(summary, _Summary)
    return summary


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _deadlock_line(report: DeadlockReport) -> str:
    if report.kind == "cycle":  # "thread 'a' waits for <lock created at f:l>", one per thread
        waits = [ln.strip() for ln in report.text.splitlines() if ln.startswith("  thread ")]
        return f"wait-for cycle of {len(waits)} threads: " + "; ".join(waits)
    line = _first_line(report.text)
    if report.label:
        line = line.replace(f" {report.label} ", " ", 1)
    return line


# -- server ownership ---------------------------------------------------------------------


# The tests being run, innermost last (pytester can run a session inside a test). The
# per-test server fixtures find their test here rather than by asking for ``request``, for
# which pytest builds a fresh fixture definition on every use: about 0.1 ms a test, half of
# what a fresh server costs.
_RUNNING: list[pytest.Item] = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _RUNNING.append(item)
    try:
        return (yield)
    finally:
        _RUNNING.remove(item)


def _own(node: pytest.Item | pytest.Collector | None, server: ThreadedServer) -> None:
    """Make ``server`` the test's: its handler errors fail the test after the call phase."""
    if node is None:
        if not _RUNNING:
            return
        node = _RUNNING[-1]
    owned = node.stash.get(_OWNED_SERVERS, None)
    if owned is None:
        owned = node.stash[_OWNED_SERVERS] = []
    owned.append(server)
    node.config.hook.pytest_netthreads_server_started(server=server, item=node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    finally:
        owned = item.stash.get(_OWNED_SERVERS, None)
        if owned:
            with _server_errors_fail():
                for server in owned:
                    server.check()


@contextlib.contextmanager
def _server_errors_fail() -> Iterator[None]:
    """Fail the test with a server's own report (its handlers' tracebacks, the stuck
    threads' stacks), not with a traceback through this plugin's teardown code."""
    try:
        yield
    except ServerError as exc:
        if _interrupted:
            _print_after_interrupt(exc)
            return
        raise pytest.fail.Exception(f"{type(exc).__name__}: {exc}", pytrace=False) from None


# -- server fixtures ------------------------------------------------------------------------


@pytest.fixture
def echo_server() -> Iterator[ThreadedServer]:
    """A started TCP echo server on loopback (a fresh one per test).

    ``echo_server.address`` is a ``(host, port)`` tuple; ``.host`` and ``.port`` too.
    """
    server = ThreadedServer(handlers.echo, concurrency="selector").start()
    _own(None, server)
    yield server
    with _server_errors_fail():
        server.stop()


@pytest.fixture
def server_factory(request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """``server_factory(handler, *, tls=False, **options)`` starts a server and returns it.

    ``handler(conn)`` is called once per accepted connection in a worker thread. ``tls=True``
    uses the session CA (``tls_ca``); an ``ssl.SSLContext`` is used as given. Every server
    made is stopped at teardown, and handler errors fail the test.
    """

    def tls_context() -> ssl.SSLContext:
        return _session_ca(request.config).server_context()

    factory = ServerFactory(tls_context=tls_context, on_start=lambda s: _own(request.node, s))
    yield factory
    with _server_errors_fail():
        factory.stop_all()


# -- TLS ------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from .tls import CertificateAuthority


def _add_tls_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    group.addoption(
        "--tls-keylog-file",
        metavar="PATH",
        default=None,
        help="append the TLS session secrets of every connection made with the session CA's "
        "contexts to PATH (NSS key log format, for Wireshark), a file created mode 0600. "
        "Off by default.",
    )
    parser.addini(
        "tls_keylog_file",
        help="like --tls-keylog-file; a relative path is relative to the ini file.",
        default=None,
    )


def _tls_keylog_file(config: pytest.Config) -> str | None:
    """The key log path asked for, absolute: a relative ``--tls-keylog-file`` is relative to
    the directory pytest was started in (not to wherever a test has changed to)."""
    path: str | None = config.getoption("tls_keylog_file")
    if path:
        return str(config.invocation_params.dir / path)
    ini: str | None = config.getini("tls_keylog_file")
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return str(base / ini)
    return None


def _configure_tls(config: pytest.Config) -> None:
    path = _tls_keylog_file(config)
    if path is not None:
        # Checked (and the file created, mode 0600) now: a bad path is a usage error, not
        # the error of every TLS test. Standard library only: trustme is not imported.
        from ._runtime.private_files import ensure_private_file

        try:
            ensure_private_file(path, "--tls-keylog-file (ini tls_keylog_file)")
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None


_SESSION_CA = pytest.StashKey["CertificateAuthority"]()


def _session_ca(config: pytest.Config) -> CertificateAuthority:
    """The session's CA, made on first use and closed (its files removed) when the session
    ends. The per-test TLS fixtures get it here rather than by requesting ``tls_ca``: a
    session-scoped dependency costs a fresh server's worth of pytest bookkeeping per test."""
    ca = config.stash.get(_SESSION_CA, None)
    if ca is None:
        from .tls import CertificateAuthority  # trustme is imported only by sessions using TLS

        _exit_on_sigterm(config)
        ca = config.stash[_SESSION_CA] = CertificateAuthority(
            keylog_file=_tls_keylog_file(config)
        )
        config.add_cleanup(ca.close)  # before _exit_on_sigterm's clean-up: cleanups are LIFO
    return ca


def _exit_on_sigterm(config: pytest.Config) -> None:
    """Make SIGTERM end the session the way Ctrl-C does (fixtures torn down, the CA's key
    files removed), with exit status 143 (128 + SIGTERM), rather than kill the process on
    the spot. Only if SIGTERM has its default disposition (nobody else handles it) and we
    are in the main thread; the default is restored when the session ends, and on the first
    SIGTERM, so that a second one kills at once."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        return

    def exit_session(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        pytest.exit(f"pytest-netthreads: received {signal.Signals(signum).name}", 128 + signum)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is exit_session:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, exit_session)
    config.add_cleanup(restore)


@pytest.fixture(scope="session")
def tls_ca(request: pytest.FixtureRequest) -> CertificateAuthority:
    """The session's test certificate authority (ECDSA keys, root plus intermediate).

    ``tls_ca.server_context(preset="valid")`` and ``tls_ca.client_context()`` make
    contexts; files (``tls_ca.ca_bundle_path()``) are removed when the session ends.
    """
    return _session_ca(request.config)


@pytest.fixture
def tls_client_context(tls_ca: CertificateAuthority) -> ssl.SSLContext:
    """A fresh client ``ssl.SSLContext`` trusting the session CA (yours to change)."""
    return tls_ca.client_context()


@pytest.fixture
def tls_echo_server() -> Iterator[ThreadedServer]:
    """A started TLS echo server on loopback (a fresh one per test), certificate from the
    session CA valid for ``localhost`` and ``127.0.0.1``. ``.address``, ``.host``, ``.port``
    and ``.connections`` (with ``record.tls``) as for ``echo_server``.
    """
    item = _RUNNING[-1]
    server = ThreadedServer(handlers.echo, ssl_context=_session_ca(item.config).server_context())
    server.start()
    _own(item, server)
    yield server
    with _server_errors_fail():
        server.stop()


# -- thread-leak check ----------------------------------------------------------------------

_THREAD_LEAK_CHECKER = pytest.StashKey[ThreadLeakChecker]()
_LEAK_OWNER = pytest.StashKey["_LeakOwner"]()


def _add_thread_leak_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
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
    parser.addini("thread_leak_check", "like --thread-leak-check", type="bool", default=False)
    parser.addini("thread_leak_grace", "like --thread-leak-grace (seconds)", default="1.0")
    parser.addini(
        "thread_leak_ignore",
        "regexes, one a line: threads whose name matches one (re.search) are never reported",
        type="linelist",
        default=[],
    )
    parser.addini("socket_leak_check", "like --socket-leak-check", type="bool", default=False)


def _leak_option(config: pytest.Config, name: str) -> object:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def _configure_thread_leak(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_thread_leak(*name_patterns): with --thread-leak-check, do not report the "
        "threads this test (or module/class, as pytestmark) leaves running; with patterns "
        "(regexes, re.search), only the threads whose name matches one",
    )
    threads = bool(_leak_option(config, "thread_leak_check"))
    sockets = bool(_leak_option(config, "socket_leak_check"))
    if not (threads or sockets):
        return
    grace = _leak_grace(_leak_option(config, "thread_leak_grace"))
    try:
        ignore = compile_patterns(config.getini("thread_leak_ignore"), "thread_leak_ignore")
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    checker = ThreadLeakChecker(grace=grace, sockets=sockets)
    checker.ignore = ignore
    config.stash[_THREAD_LEAK_CHECKER] = checker
    checker.start()
    config.add_cleanup(checker.stop)
    config.pluginmanager.register(
        _ThreadLeakPlugin(config, checker, threads=threads, sockets=sockets),
        "netthreads-thread-leak",
    )


def _leak_grace(raw: object) -> float:
    what = "--thread-leak-grace / thread_leak_grace"
    try:
        grace = float(str(raw))
    except ValueError:
        raise pytest.UsageError(f"{what} must be a number of seconds >= 0, got {raw!r}") from None
    try:
        validate_grace(grace, what)
    except ValueError as exc:
        # Named with the value as given: "inf", "1e10", not its float.
        raise pytest.UsageError(str(exc).replace(f"got {grace!r}", f"got {raw!r}")) from None
    return grace


class _LeakOwner:
    """Who started a thread: a test, or one execution of a higher-scoped fixture."""

    __slots__ = ("label", "node")

    def __init__(self, label: str, node: pytest.Item | pytest.Collector | None) -> None:
        self.label = label
        self.node = node

    def __str__(self) -> str:
        return self.label


def _allowed_threads(node: pytest.Item | pytest.Collector | None) -> list[re.Pattern[str]] | None:
    """The name patterns ``allow_thread_leak`` markers allow; ``None``: every thread."""
    if node is None:
        return []
    patterns: list[str] = []
    for marker in node.iter_markers("allow_thread_leak"):
        if not marker.args:
            return None
        patterns.extend(marker.args)
    try:
        return compile_patterns(patterns, f"@pytest.mark.allow_thread_leak on {node.nodeid}")
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None


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
            _record(item, kind, line)
        reports, self._reports = self._reports, []
        if not reports:
            return
        text = "\n\n".join(reports)
        if in_flight is not None and _add_note(in_flight, text):
            return  # the teardown's own error is kept; the leaks come after it
        pytest.fail(text, pytrace=False)

    def _check_owner(self, owner: _LeakOwner) -> None:
        # A function of its own: the leaked threads and sockets stay referenced by nothing
        # once it returns (not by the frames of the failure raised after it).
        if not self.checker.has_records(owner):
            return
        # With --socket-leak-check alone every thread is allowed, but still joined (up to
        # the grace) when a socket is open: an exiting thread may be what closes it.
        allow = _allowed_threads(owner.node) if self.threads else None
        threads, sockets = self.checker.check_all(owner, allow=allow)
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
        if leaks:
            self._reports.append(format_thread_leaks(owner, leaks, self.checker.grace))
            self._found += [("thread_leak", _leak_line(owner, leak)) for leak in leaks]
        return True

    @pytest.hookimpl(trylast=True)
    def pytest_netthreads_socket_leaks(self, owner: str, leaks: list[LeakedSocket]) -> object:
        if leaks:
            self._reports.append(format_socket_leaks(owner, leaks))
            self._found += [
                ("socket_leak", f"{_by(owner)}{leak.description}, created at {leak.created_at}")
                for leak in leaks
            ]
        return True


def _add_note(exc: BaseException, text: str) -> bool:
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
    return f"{_by(owner)}{leak.name!r} ({leak.target}{daemon}), started at {leak.started_at}"


# -- faults ---------------------------------------------------------------------------------

# Fault proxies a test's fixtures started: checked for proxy errors after the call phase, and
# their seed and fault log added to the report of a failed test.
_FAULT_PROXIES = pytest.StashKey[list[FaultProxy]]()


def _add_faults_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    group.addoption(
        "--fault-seed",
        type=int,
        default=None,
        dest="fault_seed",
        metavar="SEED",
        help="seed for every fault proxy without an explicit seed= (a failed test shows the "
        "seed it used; pass it here to replay the same faults).",
    )
    parser.addini("fault_seed", "like --fault-seed (an int; empty: a random seed)", default="")


def _fault_seed(config: pytest.Config) -> int | None:
    seed = config.getoption("fault_seed", None)
    if seed is not None:
        return int(seed)
    ini = str(config.getini("fault_seed")).strip()
    if not ini:
        return None
    try:
        return int(ini)
    except ValueError:
        raise pytest.UsageError(f"ini fault_seed must be an int, got {ini!r}") from None


def _configure_faults(config: pytest.Config) -> None:
    _fault_seed(config)  # a bad ini value is a usage error at start, not in the first test


class _FaultsPlugin:
    """Registered the first time a test uses ``fault_proxy`` (so it costs nothing before)."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            for proxy in item.stash.get(_FAULT_PROXIES, []):
                proxy.check()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        proxies = item.stash.get(_FAULT_PROXIES, [])
        if report.failed and proxies:
            for proxy in proxies:
                text = proxy.format_log()
                text += f"\nreplay with: pytest --fault-seed={proxy.seed} (or seed={proxy.seed})"
                report.sections.append((f"fault proxy {proxy.name} ({report.when})", text))
                _record(item, "fault_seed", f"{proxy.name} seed={proxy.seed}")
            if report.when == "teardown":  # made before this; the summary reads this one
                report.user_properties = list(item.user_properties)
        return report


@pytest.fixture
def fault_proxy(request: pytest.FixtureRequest) -> Iterator[Callable[..., FaultProxy]]:
    """``fault_proxy(target, *faults, seed=None, **options)`` starts a :class:`FaultProxy`.

    ``target`` is an address or any object with ``.address`` (``echo_server``, a server from
    ``server_factory``...). Clients connect to the returned proxy's ``.address``. Without a
    ``seed`` it uses ``--fault-seed`` (ini ``fault_seed``), else a random one; a failed test
    reports the seed and the fault log. Proxy errors fail the test; all stop at teardown.
    """
    config = request.config
    if not config.pluginmanager.has_plugin("netthreads-faults"):
        config.pluginmanager.register(_FaultsPlugin(), "netthreads-faults")
    default_seed = _fault_seed(config)
    node = request.node
    proxies = node.stash.setdefault(_FAULT_PROXIES, [])

    def make(target: object, *faults: Any, seed: int | None = None, **options: Any) -> FaultProxy:
        proxy = FaultProxy(
            target, *faults, seed=default_seed if seed is None else seed, **options
        ).start()
        proxies.append(proxy)
        return proxy

    yield make
    errors: list[ProxyError] = []
    for proxy in proxies:
        try:
            proxy.stop()
        except ProxyError as exc:
            errors.append(exc)
    if errors and _interrupted:
        for error in errors:
            _print_after_interrupt(error)
    elif errors:
        raise errors[0]


@pytest.fixture
def socket_faults() -> Iterator[SocketFaults]:
    """In-process faults on the sockets the test's code connects (:class:`SocketFaults`).

    ``socket_faults.add(faults.RecvChunks([1, 2]), address=server.address)``; undone at
    teardown.
    """
    faults = SocketFaults().install()
    yield faults
    faults.undo()


# -- deadlock detectors ---------------------------------------------------------------------

_DEADLOCK_PLUGIN_NAME = "netthreads-deadlock"
# A bad deadlock_timeout marker, found by the setup wrapper, raised by a plain setup hook.
_MARKER_ERROR = pytest.StashKey[BaseException]()


def _add_deadlock_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
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
    parser.addini("deadlock_timeout", "like --deadlock-timeout (seconds)", default=None)
    parser.addini("lock_order_check", "like --lock-order-check", type="bool", default=False)


def _seconds(value: object, what: str) -> float:
    """``value`` (a number or its text) as seconds: finite, >= 0, at most TIMEOUT_MAX."""
    most = f"{threading.TIMEOUT_MAX:.0f}"
    expected = f"{what} must be a number of seconds >= 0 (finite, at most {most})"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{expected}, got {value!r}")
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{expected}, got {value!r}") from None
    if not (math.isfinite(seconds) and 0 <= seconds <= threading.TIMEOUT_MAX):
        raise ValueError(f"{expected}, got {value!r}")
    return seconds


def _configure_deadlock(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "deadlock_timeout(seconds): fail this test if it is still running after `seconds` "
        "(0: wait-for cycles only); turns the deadlock detector on if it is off",
    )
    raw = config.getoption("deadlock_timeout")
    if raw is None:
        raw = config.getini("deadlock_timeout")
    timeout: float | None = None
    if raw not in (None, ""):
        try:
            timeout = _seconds(raw, "--deadlock-timeout (ini deadlock_timeout)")
        except (TypeError, ValueError) as exc:
            raise pytest.UsageError(str(exc)) from None
    lock_order = config.getoption("lock_order_check")
    if lock_order is None:
        lock_order = config.getini("lock_order_check")
    lock_order = bool(lock_order)
    if timeout is None and not lock_order:
        # Off: only look, once at collection, for a deadlock_timeout marker.
        config.pluginmanager.register(_DeadlockMarkerProbe(config), _DEADLOCK_PLUGIN_NAME)
        return
    _start_deadlock_plugin(config, timeout, deadlock=timeout is not None, lock_order=lock_order)


def _start_deadlock_plugin(
    config: pytest.Config, timeout: float | None, *, deadlock: bool, lock_order: bool
) -> _DeadlockPlugin:
    plugin = _DeadlockPlugin(config, timeout, deadlock=deadlock, lock_order=lock_order)
    if config.pluginmanager.get_plugin(_DEADLOCK_PLUGIN_NAME) is not None:
        config.pluginmanager.unregister(name=_DEADLOCK_PLUGIN_NAME)
    config.pluginmanager.register(plugin, _DEADLOCK_PLUGIN_NAME)
    plugin.start()
    config.add_cleanup(plugin.stop)
    return plugin


class _DeadlockMarkerProbe:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if any(item.get_closest_marker("deadlock_timeout") for item in items):
            _start_deadlock_plugin(self.config, None, deadlock=True, lock_order=False)


_OPTION_SOURCE = "--deadlock-timeout"


class _DeadlockPlugin:
    """The hooks of ``--deadlock-timeout`` / ``--lock-order-check`` (registered when on)."""

    def __init__(
        self, config: pytest.Config, timeout: float | None, *, deadlock: bool, lock_order: bool
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.deadlock = deadlock
        self.detector: DeadlockDetector | None = None
        self.checker = LockOrderChecker() if lock_order else None
        self._stderr_fd = -1

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
            self.detector = self._new_detector(max(5.0, self.timeout or 0.0))

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

    def _timeout_for(self, item: pytest.Item) -> tuple[float | None, str]:
        """The test's deadline (``None``: none) and what set it, for the hang report."""
        marker = item.get_closest_marker("deadlock_timeout")
        if marker is None:
            return self.timeout, _OPTION_SOURCE
        args = [repr(a) for a in marker.args] + [f"{k}={v!r}" for k, v in marker.kwargs.items()]
        source = f"@pytest.mark.deadlock_timeout({', '.join(args)})"
        if len(marker.args) + len(marker.kwargs) != 1 or set(marker.kwargs) - {"seconds"}:
            raise TypeError(
                f"{source}: deadlock_timeout(seconds) takes one argument, the seconds, got "
                f"args={marker.args!r} kwargs={marker.kwargs!r}"
            )
        value = marker.args[0] if marker.args else marker.kwargs["seconds"]
        return _seconds(value, f"{source}: seconds"), source

    def _collect(self, item: pytest.Item | None) -> str | None:
        """Hand the pending reports to the hooks; the failure message, if any is left."""
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
            try:
                caller(config=self.config, item=item, report=report)
            except pytest.fail.Exception as exc:
                failures.append(str(exc.msg))
        return "\n".join(failures) if failures else None

    def _phase(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            result = yield
        except BaseException as exc:
            failure = self._collect(item)
            if failure is None:
                raise
            if not isinstance(exc, (DeadlockError, HangError)):
                # e.g. the aborted threads' exceptions turned into errors by -W error
                first = (str(exc).splitlines() or [""])[0]
                failure += f"\n(the phase also raised {type(exc).__name__}: {first})"
            # Our report replaces the interrupt (which only repeats it).
            raise pytest.fail.Exception(failure, pytrace=False) from None
        failure = self._collect(item)
        if failure is not None:
            pytest.fail(failure, pytrace=False)
        return result

    @pytest.hookimpl(trylast=True)
    def pytest_netthreads_deadlock_report(
        self, item: pytest.Item | None, report: DeadlockReport
    ) -> object | None:
        if item is None:
            _summary(self.config).outside.append(report.text)
            return True
        _record(item, "deadlock" if report.kind == "cycle" else "hang", _deadlock_line(report))
        pytest.fail(report.text, pytrace=False)

    @pytest.hookimpl(trylast=True)
    def pytest_netthreads_lock_order_report(
        self, item: pytest.Item | None, report: LockOrderReport
    ) -> object | None:
        if item is None:
            _summary(self.config).outside.append(report.text)
            return True
        _record(item, "lock_order", _first_line(report.text))
        pytest.fail(report.text, pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, object, object]:
        if self.detector is not None:
            try:
                timeout, source = self._timeout_for(item)
            except (TypeError, ValueError) as exc:
                # Raised by the plain hook below, inside every wrapper: raising here, before
                # other plugins' setup wrappers ran, would break their teardown.
                item.stash[_MARKER_ERROR] = exc
                timeout, source = None, _OPTION_SOURCE
            self.detector.arm(item.nodeid, timeout, source=source)
        return (yield from self._phase(item))

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
        if self.detector is not None:
            self.detector.disarm()

    @pytest.hookimpl(tryfirst=True)
    def pytest_exception_interact(self) -> None:
        if self.detector is not None and self.config.getoption("usepdb", False):
            self.detector.disarm()  # --pdb: post-mortem debugging follows

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        return (yield from self._phase(item))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            return (yield from self._phase(item))
        finally:
            if self.detector is not None:
                self.detector.disarm()

    @pytest.hookimpl(tryfirst=True)
    def pytest_terminal_summary(self) -> None:
        self._collect(None)  # what is left goes to the one summary (printed after this)
