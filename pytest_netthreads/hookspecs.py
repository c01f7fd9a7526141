"""Hook specifications other plugins (and conftest files) can implement.

Registered by the plugin through ``pytest_addhooks``; the plugin's own defaults are
``trylast`` implementations, so an implementation of yours runs first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .servers import ThreadedServer

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_netthreads_server_started(server: ThreadedServer, item: Any) -> None:
    """Called when a fixture (``echo_server``, ``server_factory``...) started ``server``.

    Args:
        server: the started server (listening; ``server.address`` is set).
        item: the pytest item (test) that owns it.
    """
