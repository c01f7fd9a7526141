"""pytest-netthreads: threaded TCP/TLS test servers, socket faults and thread detectors.

Everything here works without pytest::

    from pytest_netthreads import ThreadedServer, handlers

    with ThreadedServer(handlers.echo) as srv:
        ...  # srv.address is a (host, port) that socket.create_connection accepts
"""

from __future__ import annotations

from . import faults, handlers
from ._version import __version__
from .detect.findings import NetthreadsWarning
from .detect.threadleak import ThreadLeakChecker, ThreadLeakError
from .servers import (
    Address,
    ConnectionRecord,
    HandlerError,
    ReactorDied,
    ServerConnection,
    ServerError,
    ServerStopTimeout,
    ThreadedServer,
)
from .servers.factory import ServerFactory
from .servers.process import ProcessServer, ProcessServerError, ProcessStartError

__all__ = [
    "Address",
    "ConnectionRecord",
    "HandlerError",
    "NetthreadsWarning",
    "ProcessServer",
    "ProcessServerError",
    "ProcessStartError",
    "ReactorDied",
    "ServerConnection",
    "ServerError",
    "ServerFactory",
    "ServerStopTimeout",
    "ThreadLeakChecker",
    "ThreadLeakError",
    "ThreadedServer",
    "__version__",
    "faults",
    "handlers",
]
