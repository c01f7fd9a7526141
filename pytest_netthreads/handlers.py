"""Reference connection handlers (``from pytest_netthreads import handlers``)."""

from __future__ import annotations

from .servers.handlers import (
    Banner,
    CloseStep,
    Expect,
    HTTPRequest,
    HTTPResponder,
    HTTPResponse,
    KeyValue,
    Script,
    ScriptMismatch,
    Send,
    blackhole,
    close,
    echo,
    reset,
    sink,
)

__all__ = [
    "Banner",
    "CloseStep",
    "Expect",
    "HTTPRequest",
    "HTTPResponder",
    "HTTPResponse",
    "KeyValue",
    "Script",
    "ScriptMismatch",
    "Send",
    "blackhole",
    "close",
    "echo",
    "reset",
    "sink",
]
