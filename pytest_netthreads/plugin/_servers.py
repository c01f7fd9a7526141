"""The server fixtures and server ownership: a test's servers fail the test with their errors.

``echo_server``, ``tls_echo_server`` and ``server_factory``; each server is the running
test's, checked for handler errors right after the call phase and stopped at teardown.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from .. import handlers
from ..servers import ServerError, ThreadedServer
from ..servers.factory import ServerFactory
from ._tls import session_ca

if TYPE_CHECKING:
    import ssl

# Servers started by a test's fixtures, checked for handler errors right after the call
# phase (so a handler error fails the test itself, not only its teardown).
_OWNED_SERVERS = pytest.StashKey[list[ThreadedServer]]()

# Set once the session was interrupted (Ctrl-C). pytest then tears the fixtures down in
# pytest_sessionfinish, where an exception is a crash (a traceback, exit status 1) rather
# than the usual "interrupted" (2): the fixtures print their servers' errors instead.
_interrupted = False


def note_interrupt(interrupted: bool = True) -> None:
    """Called by ``pytest_keyboard_interrupt`` (and with ``False`` at unconfigure)."""
    global _interrupted
    _interrupted = interrupted


def interrupted() -> bool:
    return _interrupted


def print_after_interrupt(exc: BaseException) -> None:
    print(f"\npytest-netthreads: stopped after the interrupt: {type(exc).__name__}: {exc}",
          file=sys.stderr)


# The tests being run, innermost last (pytester can run a session inside a test). The
# per-test server fixtures find their test here rather than by asking for ``request``, for
# which pytest builds a fresh fixture definition on every use, a large part of what a fresh
# server costs (bench/bench_servers.py measures the fixtures).
_RUNNING: list[pytest.Item] = []


def runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _RUNNING.append(item)
    try:
        return (yield)
    finally:
        _RUNNING.remove(item)


def own(node: pytest.Item | pytest.Collector | None, server: ThreadedServer) -> None:
    """Make ``server`` the test's: its handler errors fail the test after the call phase."""
    if node is None:
        if not _RUNNING:
            return
        node = _RUNNING[-1]
    owned = node.stash.get(_OWNED_SERVERS, None)
    if owned is None:
        owned = node.stash[_OWNED_SERVERS] = []
    owned.append(server)
    hook = node.config.hook.pytest_netthreads_server_started
    # Called only when implemented: even a call nobody answers costs pluggy half a dozen
    # Python calls, on every fresh server.
    if hook.get_hookimpls():
        hook(config=node.config, server=server, item=node)


def runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    finally:
        owned = item.stash.get(_OWNED_SERVERS, None)
        if owned:
            try:
                for server in owned:
                    server.check()
            except ServerError as exc:
                _fail_with(exc)


@contextlib.contextmanager
def server_errors_fail() -> Iterator[None]:
    """Fail the test with a server's own report (its handlers' tracebacks, the stuck
    threads' stacks), not with a traceback through this plugin's teardown code."""
    try:
        yield
    except ServerError as exc:
        _fail_with(exc)


def _fail_with(exc: ServerError) -> None:
    """What :func:`server_errors_fail` does with ``exc`` (called in its ``except`` clause;
    the per-test fixtures call it directly, a context manager costing more than the rest)."""
    if _interrupted:
        print_after_interrupt(exc)
        return
    raise pytest.fail.Exception(f"{type(exc).__name__}: {exc}", pytrace=False) from None


@pytest.fixture
def echo_server() -> Iterator[ThreadedServer]:
    """A started TCP echo server on loopback (a fresh one per test).

    ``echo_server.address`` is a ``(host, port)`` tuple; ``.host`` and ``.port`` too.
    """
    server = ThreadedServer(handlers.echo, concurrency="selector").start()
    own(None, server)
    yield server
    try:
        server.stop()
    except ServerError as exc:
        _fail_with(exc)


@pytest.fixture
def server_factory(request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """``server_factory(handler, *, tls=False, **options)`` starts a server and returns it.

    ``handler(conn)`` is called once per accepted connection in a worker thread. ``tls=True``
    uses the session CA (``tls_ca``); an ``ssl.SSLContext`` is used as given. Every server
    made is stopped at teardown, and handler errors fail the test.
    """

    def tls_context() -> ssl.SSLContext:
        return session_ca(request.config).server_context()

    factory = ServerFactory(tls_context=tls_context, on_start=lambda s: own(request.node, s))
    yield factory
    with server_errors_fail():
        factory.stop_all()



@pytest.fixture
def tls_echo_server() -> Iterator[ThreadedServer]:
    """A started TLS echo server on loopback (a fresh one per test), certificate from the
    session CA valid for ``localhost`` and ``127.0.0.1``. ``.address``, ``.host``, ``.port``
    and ``.connections`` (with ``record.tls``) as for ``echo_server``.
    """
    item = _RUNNING[-1]
    server = ThreadedServer(handlers.echo, ssl_context=session_ca(item.config).server_context())
    server.start()
    own(item, server)
    yield server
    try:
        server.stop()
    except ServerError as exc:
        _fail_with(exc)
