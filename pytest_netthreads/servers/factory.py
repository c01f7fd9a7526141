"""ServerFactory: start many servers, stop them all at once (what ``server_factory`` is)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from .core import ThreadedServer, stop_all


class ServerFactory:
    """Starts servers and remembers them, so that one :meth:`stop_all` stops every one.

    Usable without pytest::

        with ServerFactory() as make:
            a = make(handlers.echo)
            b = make(handlers.KeyValue(), concurrency="pool")

    Args:
        tls_context: returns the server :class:`ssl.SSLContext` used for ``tls=True``
            (the plugin passes one built on the session CA).
        on_start: called with each server once it listens (the plugin records ownership).
    """

    def __init__(
        self,
        tls_context: Callable[[], ssl.SSLContext] | None = None,
        on_start: Callable[[ThreadedServer], object] | None = None,
    ) -> None:
        self._tls_context = tls_context
        self._on_start = on_start
        self.servers: list[ThreadedServer] = []

    def __call__(
        self,
        handler: Callable[[Any], object],
        *,
        tls: bool | ssl.SSLContext = False,
        **options: Any,
    ) -> ThreadedServer:
        """Start ``ThreadedServer(handler, **options)`` and return it, listening.

        Args:
            handler: see :class:`ThreadedServer`.
            tls: ``True`` for the session CA's server context, or an :class:`ssl.SSLContext`
                used as given.
            options: any other :class:`ThreadedServer` keyword argument.
        """
        if "ssl_context" in options:
            raise TypeError("pass TLS as tls=True or tls=<ssl.SSLContext>, not ssl_context=")
        if isinstance(tls, ssl.SSLContext):
            options["ssl_context"] = tls
        elif tls is True:
            if self._tls_context is None:
                raise ValueError("tls=True needs a certificate authority; pass tls=SSLContext")
            options["ssl_context"] = self._tls_context()
        elif tls is not False:
            raise TypeError(f"tls must be True, False or an ssl.SSLContext, got {tls!r}")
        server = ThreadedServer(handler, **options)
        server.start()
        self.servers.append(server)
        if self._on_start is not None:
            self._on_start(server)
        return server

    def check(self) -> None:
        """Raise handler errors that happened so far in any of the servers."""
        for server in self.servers:
            server.check()

    def stop_all(self, timeout: float | None = None) -> None:
        """Stop every server made here; raise the first error after all are stopped."""
        servers, self.servers = self.servers, []
        stop_all(servers, timeout)

    def __enter__(self) -> ServerFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
