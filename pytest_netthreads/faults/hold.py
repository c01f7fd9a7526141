"""Holding messages in a :class:`~pytest_netthreads.faults.FaultProxy` until the test lets
them go: :meth:`FaultProxy.hold <pytest_netthreads.faults.FaultProxy.hold>` returns a
:class:`MessageHold`.

A hold cuts one direction of every connection into messages with a framing and keeps each
next message back (and the rest of that connection's stream behind it) until the test
releases or drops it. Two clients' requests then reach the server in the order the test
chooses: a race made deterministic, without sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from .._runtime import values as _values
from .framing import Framing

if TYPE_CHECKING:
    from ._connection import Pipe

HeldState = Literal["held", "released", "dropped", "closed"]


class HeldMessage:
    """One message a :class:`MessageHold` keeps back.

    Attributes:
        connection: the index of its connection (``proxy.connections[i]``).
        direction: ``"upstream"`` or ``"downstream"``.
        index: its number on that connection and direction, from 1.
        data: the message's bytes.
        state: ``"held"``, ``"released"``, ``"dropped"`` or ``"closed"`` (its connection
            ended while it was held).
    """

    def __init__(self, hold: MessageHold, pipe: Pipe, index: int, data: bytes) -> None:
        self.hold = hold
        self.pipe = pipe
        self.connection = pipe.conn.index
        self.direction = pipe.direction
        self.index = index
        self.data = data
        self.state: HeldState = "held"

    def release(self) -> None:
        """Let it go on (after the messages held before it on the same connection: a
        connection's stream keeps its order). ``RuntimeError`` if it is no longer held."""
        self.hold._settle([self], "released")

    def drop(self) -> None:
        """Throw it away: its peer never gets it. ``RuntimeError`` if it is no longer held."""
        self.hold._settle([self], "dropped")

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 60 else self.data[:57] + b"..."
        return (f"<HeldMessage #{self.connection} {self.direction} message {self.index} "
                f"{self.state}: {data!r}>")


class MessageHold:
    """Holds each next message of one direction, on every connection of a proxy.

    Made by :meth:`FaultProxy.hold <pytest_netthreads.faults.FaultProxy.hold>`; holds until
    :meth:`stop` (or the end of a ``with`` block), which releases what is still held.
    """

    def __init__(
        self,
        direction: str,
        framing: Framing,
        in_loop: Callable[[Callable[[], None]], None],
        changed: threading.Condition,
        on_stop: Callable[[MessageHold], None],
    ) -> None:
        self.direction = direction
        self.framing = framing
        self._in_loop = in_loop
        self._changed = changed
        self._on_stop = on_stop
        self._held: list[HeldMessage] = []  # under changed's lock
        self.active = True

    # -- called by the proxy's pipes (loop lock held) -----------------------------------

    def take(self, pipe: Pipe, index: int, data: bytes) -> HeldMessage:
        message = HeldMessage(self, pipe, index, data)
        with self._changed:
            self._held.append(message)
            self._changed.notify_all()
        pipe.conn.event(pipe.direction, pipe.offset, f"hold message {index} "
                        f"({len(data)} bytes)", None)
        return message

    def forget(self, message: HeldMessage) -> None:
        """Its connection ended."""
        with self._changed:
            if message in self._held:
                self._held.remove(message)
            message.state = "closed"
            self._changed.notify_all()

    # -- the test's side ------------------------------------------------------------------

    @property
    def held(self) -> list[HeldMessage]:
        """The messages held now, oldest first."""
        with self._changed:
            return list(self._held)

    def wait_held(self, count: int = 1, *, timeout: float = 10.0) -> list[HeldMessage]:
        """Block until at least ``count`` messages are held; return them, oldest first.

        Raises:
            TimeoutError: fewer were held after ``timeout`` seconds.
        """
        count, timeout = _values.wait_arguments(count, timeout)
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._held) >= count, timeout):
                raise TimeoutError(
                    f"waited {timeout:g}s for {count} held {self.direction} message(s); "
                    f"{len(self._held)} held"
                )
            return list(self._held)

    def release(self, count: int | None = None) -> list[HeldMessage]:
        """Release the ``count`` oldest held messages (all of them with ``None``); return them.

        ``ValueError`` if fewer than ``count`` are held (wait with :meth:`wait_held` first).
        """
        return self._settle(self._oldest(count, "count"), "released")

    def drop(self, count: int | None = None) -> list[HeldMessage]:
        """Drop the ``count`` oldest held messages (all with ``None``): never delivered."""
        return self._settle(self._oldest(count, "count"), "dropped")

    def stop(self) -> None:
        """Stop holding and release what is held (idempotent)."""
        if not self.active:
            return
        self.active = False
        self._on_stop(self)
        self._settle(self.held, "released", stopping=True)

    def __enter__(self) -> MessageHold:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "active" if self.active else "stopped"
        return f"<MessageHold {self.direction} {self.framing!r} {state}, {len(self.held)} held>"

    def _oldest(self, count: int | None, what: str) -> list[HeldMessage]:
        held = self.held
        if count is None:
            return held
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"{what} must be an int >= 1 or None, got {count!r}")
        if count < 1:
            raise ValueError(f"{what} must be an int >= 1 or None, got {count!r}")
        if count > len(held):
            raise ValueError(f"{what}={count} but {len(held)} message(s) are held "
                             f"(wait_held({count}) first)")
        return held[:count]

    def _settle(
        self, messages: list[HeldMessage], state: HeldState, stopping: bool = False
    ) -> list[HeldMessage]:
        def change() -> None:
            nonlocal messages
            with self._changed:
                if stopping:
                    messages = [m for m in messages if m.state == "held"]
                for message in messages:
                    if message.state != "held":
                        raise RuntimeError(f"{message!r} is no longer held")
                for message in messages:
                    message.state = state
                    self._held.remove(message)
                self._changed.notify_all()
            pipes = []
            for message in messages:
                pipe = message.pipe
                verb = "release" if state == "released" else "drop"
                pipe.conn.event(pipe.direction, pipe.offset, f"{verb} message {message.index}",
                                None)
                if pipe not in pipes:
                    pipes.append(pipe)
            for pipe in pipes:
                pipe.resume()

        if messages or stopping:
            self._in_loop(change)
        return messages


__all__ = ["HeldMessage", "HeldState", "MessageHold"]
