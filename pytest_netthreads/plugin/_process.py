"""``process_server``: real server processes as fixtures; a failed test shows their logs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import pytest

from ..servers.process import ProcessServer, ProcessServerError
from ._servers import interrupted, print_after_interrupt

# The processes a test's fixtures started: checked after the call phase (one that exited on
# its own fails the test), their logs added to the report of a failed test.
_PROCESSES = pytest.StashKey[list[ProcessServer]]()

_LOG_LINES = 100  # of each process's log in a failed test's report


class _ProcessPlugin:
    """Registered the first time a test uses ``process_server``."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            processes = item.stash.get(_PROCESSES, [])
            if processes:
                with _errors_fail():
                    for process in processes:
                        process.check()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.failed:
            for process in item.stash.get(_PROCESSES, []):
                if not process.was_ready or process.exited_early:
                    continue  # its start error, or its exit error, has the log already
                lines = process.log().rstrip("\n").split("\n")
                text = "\n".join(lines[-_LOG_LINES:])
                if len(lines) > _LOG_LINES:
                    text = f"[last {_LOG_LINES} of {len(lines)} lines]\n{text}"
                title = f"process {process.name} pid {process.pid or '-'} log ({report.when})"
                report.sections.append((title, text or "(empty)"))
        return report


@contextlib.contextmanager
def _errors_fail() -> Iterator[None]:
    """Fail the test with the process's own message (its log), not a plugin traceback."""
    try:
        yield
    except ProcessServerError as exc:
        if interrupted():
            print_after_interrupt(exc)
            return
        raise pytest.fail.Exception(f"{type(exc).__name__}: {exc}", pytrace=False) from None


@pytest.fixture
def process_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., ProcessServer]]:
    """``process_server(command, **options)`` starts a :class:`ProcessServer` and returns it
    once it is ready.

    ``command`` is a list of arguments with the placeholders ``{port}`` (a free loopback
    port), ``{host}``, ``{unix}`` and ``{tmpdir}``; ``options`` are :class:`ProcessServer`
    keyword arguments (``ready_log``, ``ready_banner``, ``start_timeout``...). A process that
    does not start fails the test with its log; one that exits on its own during the test
    fails it too; a failed test shows each process's log. All are stopped at teardown
    (``SIGTERM`` to the process group, ``SIGKILL`` after ``stop_timeout``).
    """
    config = request.config
    if not config.pluginmanager.has_plugin("netthreads-process"):
        config.pluginmanager.register(_ProcessPlugin(), "netthreads-process")
    processes = request.node.stash.setdefault(_PROCESSES, [])

    def start(command: Sequence[Any], **options: Any) -> ProcessServer:
        process = ProcessServer(command, **options)
        processes.append(process)  # before start: a start error's log is in the report too
        with _errors_fail():
            process.start()
        return process

    yield start
    errors: list[ProcessServerError] = []
    for process in processes:
        try:
            process.stop()
        except ProcessServerError as exc:
            errors.append(exc)
    if errors:
        with _errors_fail():
            raise errors[0]
