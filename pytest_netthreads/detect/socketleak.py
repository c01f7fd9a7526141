"""Socket leaks: sockets an owner (a test, a fixture scope) created and left open.

:class:`~pytest_netthreads.detect.threadleak.ThreadLeakChecker` with ``sockets=True`` records
each socket created (``socket.socket.__init__``, so ``accept``, ``socketpair``,
``create_connection`` and TLS sockets too) with its owner and creation stack; this module
decides which records are leaks and formats them.

Not blamed: sockets created by the kit's own threads (a server's accepted connections: the
server closes them at its stop), the shared reactor's own wake-up sockets, and sockets whose
owner is no test (created before the checker started, or by threads that existed before).
A socket that was garbage-collected is not open any more (Python warns about it with a
``ResourceWarning`` of its own); before reporting, the garbage collector runs once, so a
socket kept alive only by a reference cycle is not reported as open. With ``collected=True``
the checker also notes each socket it recorded that is garbage-collected while still open
(the ``ResourceWarning`` case, which names no creation site): :class:`LeakedSocket` with
``collected=True``.
"""

from __future__ import annotations

import gc
import os
import socket
import weakref
from collections.abc import Hashable
from dataclasses import dataclass

from .._runtime.stacks import Frame, format_frames, started_by, where
from .._runtime.values import format_address

_KIT_SOCKET_FILES = (os.path.join("pytest_netthreads", "_runtime", "reactor.py"),)


@dataclass(eq=False)
class SocketRecord:
    """Where and by whom one socket was created (weakly: it does not keep the socket)."""

    ref: weakref.ref[socket.socket]
    owner: Hashable
    frames: tuple[Frame, ...]

    def open(self) -> bool:
        sock = self.ref()
        return sock is not None and sock.fileno() != -1

    def kit_owned(self) -> bool:
        return any(f[0].endswith(_KIT_SOCKET_FILES) for f in self.frames)


@dataclass(frozen=True)
class LeakedSocket:
    """A socket still open (``fileno() != -1``) when its owner was checked, or (``collected``)
    one garbage-collected while still open.

    Attributes:
        socket: the socket itself (``None`` for a collected one).
        description: family, type, local and peer address.
        owner: the owner's label.
        created_at: ``file:line in function`` of the code that created it.
        creation_stack: the stack that created it, formatted (most recent call last).
        created_by: the outermost frame of the creation stack inside the checker's
            ``root``, when it is not the one ``created_at`` names (else ``None``).
    """

    socket: socket.socket | None
    description: str
    owner: str
    created_at: str
    creation_stack: str
    collected: bool = False
    """Garbage-collected without being closed (Python closed it, with a ``ResourceWarning``)."""
    created_by: str | None = None

    def format(self) -> str:
        by = f"created by {self.created_by}\n" if self.created_by else ""
        return (
            f"--- socket {self.description}\n"
            f"created at {self.created_at}\n{by}"
            f"creation stack (most recent call last):\n{self.creation_stack}"
        )


def describe_socket(sock: socket.socket) -> str:
    """``fd=N AF_INET SOCK_STREAM 127.0.0.1:5000 -> 127.0.0.1:6000`` (what can be read)."""
    parts = [f"fd={sock.fileno()}"]
    try:
        parts.append(socket.AddressFamily(sock.family).name)
    except ValueError:
        parts.append(str(sock.family))
    try:
        parts.append(socket.SocketKind(sock.type).name)
    except ValueError:
        parts.append(str(sock.type))
    try:
        local = format_address(sock.getsockname(), unnamed="")
    except OSError:
        local = ""
    try:
        peer = format_address(sock.getpeername(), unnamed="")
    except OSError:
        peer = ""
    if local:
        parts.append(local)
    if peer:
        parts.append(f"-> {peer}")
    elif local:
        parts.append("(not connected)")
    return " ".join(parts)


def still_open(records: list[SocketRecord]) -> list[SocketRecord]:
    """The records whose socket is open, the kit's own sockets left out."""
    return [record for record in records if record.open() and not record.kit_owned()]


def find_leaked_sockets(
    records: list[SocketRecord], root: str | None = None
) -> list[LeakedSocket]:
    """The records whose socket is still open, as :class:`LeakedSocket`, kit sockets left out.

    ``root``: the user's directory, for :attr:`LeakedSocket.created_by`.

    Before anything is reported the garbage collector runs once: a socket that only a
    reference cycle kept alive (say, a connection pool reachable from a traceback's frames,
    closed by its finalizer) is not one the code under test still holds.
    """
    candidates = still_open(records)
    if candidates:
        gc.collect()
        candidates = still_open(candidates)
    leaks = []
    for record in candidates:
        sock = record.ref()
        if sock is None:
            continue
        leaks.append(
            LeakedSocket(
                socket=sock,
                description=describe_socket(sock),
                owner=str(record.owner),
                created_at=where(record.frames),
                creation_stack=format_frames(record.frames),
                created_by=started_by(record.frames, root),
            )
        )
    return leaks


def collected_leak(
    record: SocketRecord, description: str, root: str | None = None
) -> LeakedSocket:
    """The :class:`LeakedSocket` of a socket collected while open (``description`` was taken
    in its finalizer, before Python closed it)."""
    return LeakedSocket(
        socket=None,
        description=description,
        owner=str(record.owner),
        created_at=where(record.frames),
        creation_stack=format_frames(record.frames),
        collected=True,
        created_by=started_by(record.frames, root),
    )


def format_socket_leaks(owner: str, leaks: list[LeakedSocket]) -> str:
    """The report for ``leaks``: a headline naming ``owner``, then each socket (those left
    open, then those collected unclosed, each kind under its own headline)."""
    parts = []
    still = [leak for leak in leaks if not leak.collected]
    if still:
        parts.append(f"{len(still)} socket(s) created by {owner} still open after its teardown:")
        parts.extend(leak.format() for leak in still)
    collected = [leak for leak in leaks if leak.collected]
    if collected:
        parts.append(
            f"{len(collected)} socket(s) created by {owner} garbage-collected without being "
            "closed (Python closed them, with a ResourceWarning):"
        )
        parts.extend(leak.format() for leak in collected)
    return "\n".join(parts)


__all__ = [
    "LeakedSocket",
    "SocketRecord",
    "collected_leak",
    "describe_socket",
    "find_leaked_sockets",
    "format_socket_leaks",
    "still_open",
]
