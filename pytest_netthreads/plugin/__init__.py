"""The pytest entry point (``pytest11``): options, markers, fixtures and report wiring.

The ``plugin`` package is the only part of pytest-netthreads that imports pytest; everything
it wires up is usable without it. One module per feature: :mod:`._servers` (the server
fixtures and their ownership), :mod:`._tls`, :mod:`._faults`, :mod:`._leaks`,
:mod:`._deadlock`, :mod:`._tasks`, :mod:`._summary` (one summary of the run), :mod:`._compat` (other
interpreters and plugins), :mod:`._config` (options and ini keys). This module holds the
hooks pytest calls, each handing on to the features, and re-exports the fixtures.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from .. import hookspecs
from .._runtime.reactor import shutdown_reactor_if_idle
from ..detect.findings import NetthreadsWarning
from . import _compat, _deadlock, _faults, _leaks, _servers, _summary, _tasks, _tls
from ._faults import fault_network, fault_proxy, socket_faults
from ._process import process_server
from ._servers import echo_server, server_factory, tls_echo_server
from ._tls import tls_ca, tls_client_context


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netthreads", "pytest-netthreads: servers, faults, detectors")
    for feature in (_tls, _leaks, _tasks, _faults, _deadlock):
        feature.add_options(parser, group)


def pytest_configure(config: pytest.Config) -> None:
    # Each feature registers its markers here and, only when it is switched on, an object
    # holding its hook implementations: a feature that is off costs nothing per test.
    _summary.configure(config)
    _tls.configure(config)
    _leaks.configure(config)
    _tasks.configure(config)
    _faults.configure(config)
    _deadlock.configure(config)


@pytest.hookimpl(tryfirst=True, specname="pytest_configure")
def pytest_configure_thread_unsafe_fixtures(config: pytest.Config) -> None:
    # Before pytest-run-parallel's own pytest_configure, which reads the list once.
    _compat.declare_thread_unsafe_fixtures(config)


def pytest_unconfigure() -> None:
    _servers.note_interrupt(False)
    shutdown_reactor_if_idle()


def pytest_keyboard_interrupt() -> None:
    _servers.note_interrupt()


def pytest_report_header(config: pytest.Config) -> list[str]:
    detectors = _leaks.header(config) + _tasks.header(config) + _deadlock.header(config)
    return _compat.gil_header() + _compat.detectors_header(detectors)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _servers.runtest_protocol(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _servers.runtest_call(item))


__all__ = [
    "NetthreadsWarning",
    "echo_server",
    "fault_network",
    "fault_proxy",
    "process_server",
    "server_factory",
    "socket_faults",
    "tls_ca",
    "tls_client_context",
    "tls_echo_server",
]
