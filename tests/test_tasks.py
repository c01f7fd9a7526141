"""The asyncio core, without pytest: running loops in any thread, await chains, task leaks.

Real event loops and real loopback sockets; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Iterator

import pytest

from pytest_netthreads.detect.tasks import (
    TaskLeakChecker,
    TaskLeakError,
    format_running_loops,
    format_task_leaks,
    running_loops,
)


async def _read_forever(reader: asyncio.StreamReader) -> bytes:
    return await reader.read(100)  # the peer never writes


@pytest.fixture
def silent_peer() -> Iterator[tuple[str, int]]:
    """A listening socket that accepts (in the backlog) and never writes."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[:2]


def _loop_in_thread(
    address: tuple[str, int],
) -> tuple[threading.Thread, threading.Event, list[asyncio.AbstractEventLoop]]:
    ready = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []
    stop: list[asyncio.Future[None]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loops.append(loop)
        reader, writer = await asyncio.open_connection(*address)
        reader_task = asyncio.create_task(_read_forever(reader), name="reader")
        await asyncio.sleep(0)  # the reader's first step: it waits for data
        stop.append(loop.create_future())
        ready.set()
        await stop[0]
        reader_task.cancel()
        writer.close()
        await writer.wait_closed()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="loop-thread")
    thread.start()
    assert ready.wait(10)

    def finish() -> None:
        loops[0].call_soon_threadsafe(stop[0].set_result, None)

    thread.finish = finish  # type: ignore[attr-defined]
    return thread, ready, loops


def test_running_loops_are_found_in_any_thread_with_their_tasks(
    silent_peer: tuple[str, int],
) -> None:
    assert running_loops() == []
    assert format_running_loops() == ""
    thread, _, loops = _loop_in_thread(silent_peer)
    try:
        found = running_loops()
        assert [(r.loop, r.thread, r.ident) for r in found] == [
            (loops[0], "loop-thread", thread.ident)
        ]
        text = format_running_loops()
    finally:
        thread.finish()  # type: ignore[attr-defined]
        thread.join(10)
    assert not thread.is_alive()
    lines = text.splitlines()
    assert lines[0] == "Event loops running (each task's await chain, most recent call last):"
    assert lines[1].startswith("--- event loop _UnixSelectorEventLoop (id 0x")
    assert lines[1].endswith(f"in thread 'loop-thread' (ident {thread.ident}): 2 pending task(s)")
    assert "  task 'reader' (coroutine _read_forever):" in lines
    # The chain goes down from the task's coroutine into the stream's own wait.
    reader = text[text.index("task 'reader'") :]
    assert f'File "{__file__}", line' in reader
    assert "return await reader.read(100)  # the peer never writes" in reader
    assert "in _wait_for_data" in reader
    assert "awaiting <Future pending" in reader
    if sys.version_info >= (3, 14):
        # The call graph API names who awaits whom; the reader task is awaited by nobody.
        main = text[text.index("<locals>.main)") : text.index("task 'reader'")]
        assert "awaited by" not in main


def test_an_abandoned_task_of_asyncio_run_is_a_leak_with_its_await_chain(
    silent_peer: tuple[str, int],
) -> None:
    async def main() -> None:
        reader, writer = await asyncio.open_connection(*silent_peer)
        asyncio.create_task(_read_forever(reader), name="forgotten")  # noqa: RUF006 (the bug)
        await asyncio.sleep(0)
        writer.close()

    with pytest.raises(TaskLeakError) as info:
        with TaskLeakChecker():
            asyncio.run(main())
    text = str(info.value)
    lines = text.splitlines()
    assert lines[0] == "1 asyncio task(s) created by the block left pending:"
    assert lines[1] == (
        "--- task 'forgotten' (coroutine _read_forever), pending when its event loop began "
        "closing (asyncio.run cancels such tasks) in thread 'MainThread'"
    )
    assert lines[2].startswith(f"created at {__file__}:") and lines[2].endswith(" in main")
    assert "await chain when it was seen pending (most recent call last):" in lines
    assert "    return await reader.read(100)  # the peer never writes" in lines


def test_finished_cancelled_and_unowned_tasks_are_no_leak() -> None:
    async def main() -> None:
        done = asyncio.create_task(asyncio.sleep(0))
        cancelled = asyncio.create_task(asyncio.sleep(3600))
        await done
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled

    async def abandon() -> None:
        asyncio.create_task(asyncio.sleep(3600))  # noqa: RUF006 (left pending on purpose)
        await asyncio.sleep(0)

    checker = TaskLeakChecker().start()
    try:
        checker.set_owner("test")
        asyncio.run(main())
        checker.set_owner(None)
        asyncio.run(abandon())  # nobody owns it
        assert checker.check("test") == []
        assert not checker.has_records("test")
    finally:
        checker.stop()


def test_a_loop_closed_by_hand_and_a_loop_left_open() -> None:
    async def start(name: str) -> None:
        asyncio.create_task(asyncio.sleep(3600), name=name)  # noqa: RUF006 (on purpose)

    checker = TaskLeakChecker().start()
    closed = asyncio.new_event_loop()
    # Its task is destroyed pending once the report is gone: asyncio says so, not a failure.
    closed.set_exception_handler(lambda loop, context: None)
    kept = asyncio.new_event_loop()
    try:
        checker.set_owner("test")
        closed.run_until_complete(start("closed-with-it"))
        closed.close()
        kept.run_until_complete(start("still-pending"))
        checker.set_owner(None)
        leaks = checker.check("test")
    finally:
        checker.stop()
        for task in asyncio.all_tasks(kept):
            task.cancel()
        kept.run_until_complete(asyncio.sleep(0))
        kept.close()
    assert [(leak.description, leak.when, leak.thread) for leak in leaks] == [
        ("'closed-with-it' (coroutine sleep)", "when its event loop was closed", "MainThread"),
        ("'still-pending' (coroutine sleep)", "when it was checked (at its test's teardown)", None),
    ]
    text = format_task_leaks("test", leaks)
    assert text.startswith("2 asyncio task(s) created by test left pending:\n")


def test_stop_restores_asyncio() -> None:
    import asyncio.tasks

    before = (
        asyncio.BaseEventLoop.__dict__["create_task"],
        asyncio.BaseEventLoop.__dict__["close"],
        asyncio.tasks.all_tasks,
    )
    checker = TaskLeakChecker().start()
    with pytest.raises(RuntimeError, match="already started"):
        checker.start()
    checker.stop()
    after = (
        asyncio.BaseEventLoop.__dict__["create_task"],
        asyncio.BaseEventLoop.__dict__["close"],
        asyncio.tasks.all_tasks,
    )
    assert after == before
