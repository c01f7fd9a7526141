"""BUGGY: an asyncio client whose ``close()`` forgets the heartbeat task it started.

``connect()`` starts a task that pings the server now and then; ``close()`` closes the
connection but never cancels the task. ``asyncio.run`` cancels it silently when the test's
loop closes, so the test passes, and in a long-lived loop (a server, a pytest-asyncio
module-scoped loop) the task pings a closed connection for ever. Caught by
``--task-leak-check`` at the test's teardown, with where the task was created and where it
was waiting when the loop began closing::

    pytest --task-leak-check examples/buggy/forgotten_heartbeat.py

The fix: keep the task and cancel (and await) it in ``close()``.
"""

from __future__ import annotations

import asyncio


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.heartbeat: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> Client:
        reader, writer = await asyncio.open_connection(*address)
        client = cls(reader, writer)
        client.heartbeat = asyncio.create_task(client._heartbeat(), name="heartbeat")
        return client

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(30)
            self.writer.write(b"PING\n")

    async def ask(self, line: bytes) -> bytes:
        self.writer.write(line)
        return await self.reader.readline()

    async def close(self) -> None:  # BUG: self.heartbeat is never cancelled
        self.writer.close()
        await self.writer.wait_closed()


def test_ask_once(echo_server):
    async def main() -> None:
        client = await Client.connect(echo_server.address)
        assert await client.ask(b"HELLO\n") == b"HELLO\n"
        await client.close()

    asyncio.run(main())
