"""Threaded test servers: the core and the reference handlers."""

from __future__ import annotations

from . import handlers
from ._reactor import ReactorDied
from .core import (
    Address,
    ConnectionRecord,
    HandlerError,
    NativeConnection,
    ServerConnection,
    ServerError,
    ServerStopTimeout,
    ThreadedServer,
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
    "stop_all",
]
