"""The pytest entry point (``pytest11``): options, markers, fixtures and report wiring.

This is the only module of the package that imports pytest; everything it wires up is
usable without it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from . import handlers, hookspecs
from .servers import ThreadedServer
from .servers._reactor import shutdown_reactor_if_idle
from .servers.factory import ServerFactory

if TYPE_CHECKING:
    import ssl

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
    del group


def pytest_configure(config: pytest.Config) -> None:
    # Each feature registers its markers here, and, only when it is switched on, an object
    # holding its hook implementations (config.pluginmanager.register), so that a feature
    # that is off costs nothing per test.
    del config


def pytest_unconfigure(config: pytest.Config) -> None:
    del config
    shutdown_reactor_if_idle()


# -- server ownership ---------------------------------------------------------------------


def _own(request: pytest.FixtureRequest, server: ThreadedServer) -> None:
    node = request.node
    owned = node.stash.get(_OWNED_SERVERS, None)
    if owned is None:
        owned = node.stash[_OWNED_SERVERS] = []
    owned.append(server)
    request.config.hook.pytest_netthreads_server_started(server=server, item=node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    finally:
        owned = item.stash.get(_OWNED_SERVERS, None)
        if owned:
            for server in owned:
                server.check()


# -- server fixtures ------------------------------------------------------------------------


@pytest.fixture
def echo_server(request: pytest.FixtureRequest) -> Iterator[ThreadedServer]:
    """A started TCP echo server on loopback (a fresh one per test).

    ``echo_server.address`` is a ``(host, port)`` tuple; ``.host`` and ``.port`` too.
    """
    server = ThreadedServer(handlers.echo, concurrency="selector").start()
    _own(request, server)
    yield server
    server.stop()


@pytest.fixture
def server_factory(request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """``server_factory(handler, *, tls=False, **options)`` starts a server and returns it.

    ``handler(conn)`` is called once per accepted connection in a worker thread. ``tls=True``
    uses the session CA (``tls_ca``); an ``ssl.SSLContext`` is used as given. Every server
    made is stopped at teardown, and handler errors fail the test.
    """

    def tls_context() -> ssl.SSLContext:
        context: ssl.SSLContext = request.getfixturevalue("tls_ca").server_context()
        return context

    factory = ServerFactory(tls_context=tls_context, on_start=lambda s: _own(request, s))
    yield factory
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
        "contexts to PATH (NSS key log format, for Wireshark). Off by default.",
    )
    parser.addini(
        "tls_keylog_file",
        help="like --tls-keylog-file; a relative path is relative to the ini file.",
        default=None,
    )


def _tls_keylog_file(config: pytest.Config) -> str | None:
    path: str | None = config.getoption("tls_keylog_file")
    if path:
        return path
    ini: str | None = config.getini("tls_keylog_file")
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return str(base / ini)
    return None


@pytest.fixture(scope="session")
def tls_ca(request: pytest.FixtureRequest) -> Iterator[CertificateAuthority]:
    """The session's test certificate authority (ECDSA keys, root plus intermediate).

    ``tls_ca.server_context(preset="valid")`` and ``tls_ca.client_context()`` make
    contexts; files (``tls_ca.ca_bundle_path()``) are removed when the session ends.
    """
    from .tls import CertificateAuthority  # trustme is imported only by sessions using TLS

    with CertificateAuthority(keylog_file=_tls_keylog_file(request.config)) as ca:
        yield ca


@pytest.fixture
def tls_client_context(tls_ca: CertificateAuthority) -> ssl.SSLContext:
    """A fresh client ``ssl.SSLContext`` trusting the session CA (yours to change)."""
    return tls_ca.client_context()


@pytest.fixture
def tls_echo_server(
    request: pytest.FixtureRequest, tls_ca: CertificateAuthority
) -> Iterator[ThreadedServer]:
    """A started TLS echo server on loopback (a fresh one per test), certificate from the
    session CA valid for ``localhost`` and ``127.0.0.1``. ``.address``, ``.host``, ``.port``
    and ``.connections`` (with ``record.tls``) as for ``echo_server``.
    """
    server = ThreadedServer(handlers.echo, ssl_context=tls_ca.server_context()).start()
    _own(request, server)
    yield server
    server.stop()
