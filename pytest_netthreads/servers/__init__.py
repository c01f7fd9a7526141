"""Threaded test servers: the core and the reference handlers."""

from __future__ import annotations

from .._runtime.reactor import ReactorDied
from . import handlers
from .core import (
    Address,
    ConnectionRecord,
    HandlerError,
    NativeConnection,
    ServerConnection,
    ServerError,
    ServerStopTimeout,
    ThreadedServer,
    native,
    stop_all,
)

__all__ = [
    "Address",
    "ConnectionRecord",
    "HandlerError",
    "NativeConnection",
    "ReactorDied",
    "ServerConnection",
    "ServerError",
    "ServerStopTimeout",
    "ThreadedServer",
    "handlers",
    "native",
    "stop_all",
]
