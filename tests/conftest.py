from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_netthreads._runtime.reactor import get_reactor
from tests._util import live_threads, open_fds


@pytest.fixture
def no_thread_or_fd_leak() -> Iterator[None]:
    """Fails the test if it leaves threads or file descriptors behind."""
    get_reactor().start()  # the shared loop and its descriptors live for the whole process
    threads, fds = live_threads(), open_fds()
    yield
    for t in live_threads() - threads:
        t.join(5)
    assert live_threads() - threads == set()
    assert open_fds() == fds
