"""BUGGY: an asyncio client that awaits a reply without a timeout.

``await reader.readline()`` waits as long as the network is silent: for ever. The fault
proxy's ``Timeout`` fault makes the network go silent on purpose; the hang watchdog
(``--deadlock-timeout``) fails the test after the deadline. The thread's stack alone shows
only the event loop's ``select()``; the report also lists every running event loop with its
pending tasks and each task's await chain, which ends at the ``readline``::

    pytest --deadlock-timeout=2 examples/buggy/await_without_timeout.py

The fix: ``await asyncio.wait_for(reader.readline(), 5)``; the test then passes (it raises
``asyncio.TimeoutError``).
"""

from __future__ import annotations

import asyncio

import pytest

from pytest_netthreads import faults, handlers


async def get(address: tuple[str, int], key: str) -> str:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(f"GET {key}\n".encode())
        reply = await reader.readline()  # BUG: no timeout
        return reply.decode().rstrip("\n")
    finally:
        writer.close()


def test_a_silent_network_is_a_timeout(server_factory, fault_proxy):
    kv = server_factory(handlers.KeyValue({"k": "v"}))
    proxy = fault_proxy(kv, faults.Timeout(after_bytes=0))  # replies never arrive
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(get(proxy.address, "k"))
