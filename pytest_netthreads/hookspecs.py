"""Hook specifications other plugins (and conftest files) can implement.

Registered by the plugin through ``pytest_addhooks``; the plugin's own defaults are
``trylast`` implementations, so an implementation of yours runs first.

Mark each implementation ``@pytest.hookimpl(optionalhook=True)``: these hooks exist only while
the plugin is loaded, and pytest refuses a conftest (or plugin) that implements a hook it does
not know, so without the mark ``pytest -p no:netthreads`` fails at startup with
``PluginValidationError: unknown hook 'pytest_netthreads_...'``::

    import pytest

    @pytest.hookimpl(optionalhook=True)
    def pytest_netthreads_thread_leaks(config, node, owner, leaks):
        leaks[:] = [leak for leak in leaks if not leak.name.startswith("pool-keepalive")]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    # Only for the annotations: this module does not import pytest at run time.
    import pytest

    from .detect.deadlock import DeadlockReport
    from .detect.lockorder import LockOrderReport
    from .detect.socketleak import LeakedSocket
    from .detect.tasks import LeakedTask
    from .detect.threadleak import LeakedThread
    from .servers import ThreadedServer

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_netthreads_server_started(
    config: pytest.Config, server: ThreadedServer, item: pytest.Item | pytest.Collector
) -> None:
    """Called when a fixture (``echo_server``, ``server_factory``...) started ``server``.

    Args:
        config: the pytest config.
        server: the started server (listening; ``server.address`` is set).
        item: the pytest item (test) that owns it (the node of its scope for a
            ``server_factory`` used by a wider-scoped fixture).
    """


@hookspec(firstresult=True)
def pytest_netthreads_thread_leaks(
    config: pytest.Config,
    node: pytest.Item | pytest.Collector,
    owner: str,
    leaks: list[LeakedThread],
) -> object | None:
    """Called with the threads a test (or a fixture scope) left running (``--thread-leak-check``).

    Filter by removing entries from ``leaks`` (in place) and returning ``None``; take the report
    over by returning anything but ``None`` (nothing more is done then). The default
    implementation (``trylast``) fails the test at teardown with the report, if ``leaks`` is
    not empty (leaks the ``--leak-baseline`` file lists, or all of them at
    ``--thread-leak-level=warn``, are reported without failing it).

    Args:
        config: the pytest config.
        node: the test item, or for a module/class/package/session-scoped fixture the node of
            its scope; the error is reported at the teardown of the test where that scope ended.
        owner: a label for who started the threads (the test's node id, or the fixture).
        leaks: :class:`~pytest_netthreads.detect.threadleak.LeakedThread` records.
    """


@hookspec(firstresult=True)
def pytest_netthreads_socket_leaks(
    config: pytest.Config,
    node: pytest.Item | pytest.Collector,
    owner: str,
    leaks: list[LeakedSocket],
) -> object | None:
    """Called with the sockets a test (or a fixture scope) left open (``--socket-leak-check``).

    The same contract as :func:`pytest_netthreads_thread_leaks`, for
    :class:`~pytest_netthreads.detect.socketleak.LeakedSocket` records. With
    ``--socket-leak-collected`` the list also holds the sockets garbage-collected while open
    (``leak.collected`` is true, ``leak.socket`` is ``None``).
    """


@hookspec(firstresult=True)
def pytest_netthreads_task_leaks(
    config: pytest.Config,
    node: pytest.Item,
    owner: str,
    leaks: list[LeakedTask],
) -> object | None:
    """Called with the asyncio tasks a test left pending (``--task-leak-check``).

    The same contract as :func:`pytest_netthreads_thread_leaks`, for
    :class:`~pytest_netthreads.detect.tasks.LeakedTask` records: tasks the test created that
    were still pending when their event loop began closing (``leak.when`` says when), or at
    the test's teardown. The default implementation (``trylast``) fails the test at teardown.

    Args:
        config: the pytest config.
        node: the test item.
        owner: the test's node id.
        leaks: the leaked tasks, oldest first.
    """


@hookspec(firstresult=True)
def pytest_netthreads_deadlock_report(
    config: pytest.Config, item: pytest.Item | None, report: DeadlockReport
) -> object | None:
    """Called in the test's thread after a phase in which a deadlock or hang was found.

    ``--deadlock-timeout`` (or the ``deadlock_timeout`` marker) found a wait-for cycle, or the
    test was still running at its deadline; the test's thread has already been interrupted
    (it raised :class:`~pytest_netthreads.detect.deadlock.DeadlockError` or ``HangError``).
    Return anything but ``None`` to take the report over: the plugin then leaves the phase's
    outcome as it is. The default implementation (``trylast``) fails the phase with
    ``report.text``.

    Args:
        config: the pytest config.
        item: the test item.
        report: a :class:`~pytest_netthreads.detect.deadlock.DeadlockReport`
            (``kind`` is ``"cycle"`` or ``"timeout"``).
    """


@hookspec(firstresult=True)
def pytest_netthreads_lock_order_report(
    config: pytest.Config, item: pytest.Item | None, report: LockOrderReport
) -> object | None:
    """Called with a lock-order inversion (``--lock-order-check``) seen during a test's phase.

    Return anything but ``None`` to take the report over (the test is then not failed for it).
    The default implementation (``trylast``) fails the phase with ``report.text``. ``item`` is
    ``None`` for an inversion seen outside any test (it is then shown in the terminal summary).

    Args:
        config: the pytest config.
        item: the test item, or ``None``.
        report: a :class:`~pytest_netthreads.detect.lockorder.LockOrderReport`.
    """
