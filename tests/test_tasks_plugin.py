"""``--task-leak-check`` and the event loops in the hang report, end to end.

Real pytest sessions in subprocesses, each bounded by ``timeout=``; real event loops under
``asyncio.run``, pytest-asyncio and anyio's pytest plugin, with real loopback sockets.
"""

from __future__ import annotations

import pytest

RUN_TIMEOUT = 120

LEAKY = """
import asyncio
import socket

import pytest


async def heartbeat(writer):
    while True:
        writer.write(b"PING\\n")
        await asyncio.sleep(3600)


async def connect(address):
    return await asyncio.open_connection(*address)


def test_asyncio_run_leak(echo_server):
    async def main():
        reader, writer = await connect(echo_server.address)
        asyncio.create_task(heartbeat(writer), name="heartbeat")  # never stopped
        assert await reader.readline() == b"PING\\n"
        writer.close()

    asyncio.run(main())


def test_asyncio_run_clean(echo_server):
    async def main():
        reader, writer = await connect(echo_server.address)
        task = asyncio.create_task(heartbeat(writer), name="heartbeat")
        assert await reader.readline() == b"PING\\n"
        task.cancel()
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())
"""

PLUGINS = """
import asyncio

import pytest


async def heartbeat():
    while True:
        await asyncio.sleep(3600)


@pytest.mark.asyncio
async def test_pytest_asyncio_leak():
    asyncio.create_task(heartbeat(), name="pa-heartbeat")
    await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_pytest_asyncio_clean():
    task = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)
    task.cancel()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_anyio_leak():
    asyncio.create_task(heartbeat(), name="anyio-heartbeat")
    await asyncio.sleep(0)


@pytest.mark.anyio
async def test_anyio_clean():
    await asyncio.sleep(0)
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=RUN_TIMEOUT)


def test_a_task_left_pending_by_asyncio_run_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = _run(pytester, "--task-leak-check")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_asyncio_run_leak*",
            "1 asyncio task(s) created by test_leaky.py::test_asyncio_run_leak left pending:",
            "--- task 'heartbeat' (coroutine heartbeat), pending when its event loop began "
            "closing (asyncio.run cancels such tasks) in thread 'MainThread'",
            "created at *test_leaky.py:* in main",
            "creation stack (most recent call last):",
            '*asyncio.create_task(heartbeat(writer), name="heartbeat")  # never stopped',
            "await chain when it was seen pending (most recent call last):",
            '  File "*test_leaky.py", line *, in heartbeat',
            "    await asyncio.sleep(3600)",
            "    awaiting <Future pending*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*= pytest-netthreads =*",
            "asyncio task leaks: 1",
            "  test_leaky.py::test_asyncio_run_leak: 'heartbeat' (coroutine heartbeat), "
            "created at test_leaky.py:* in main",
        ]
    )
    assert "test_asyncio_run_clean" not in result.stdout.str().split("= ERRORS =")[1]


def test_without_the_option_nothing_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = _run(pytester)
    result.assert_outcomes(passed=2)
    assert "--task-leak-check" not in result.stdout.str()


def test_the_ini_key_and_the_header(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    pytester.makeini("[pytest]\ntask_leak_check = true\n")
    result = _run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*--task-leak-check*"])


def test_the_warn_level_reports_without_failing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    pytester.makeini("[pytest]\ntask_leak_level = warn\nfilterwarnings = error\n")
    result = _run(pytester, "--task-leak-check", "-rA")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*--task-leak-check*--task-leak-level=warn*",
            "*NetthreadsWarning: asyncio task leak (--task-leak-level=warn): 'heartbeat' "
            "(coroutine heartbeat), created at *test_leaky.py:* in main",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*- Captured netthreads (warn level) teardown -*",
            "1 asyncio task(s) created by test_leaky.py::test_asyncio_run_leak left pending:",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*= pytest-netthreads =*",
            "asyncio task leaks: 1*",
            "  test_leaky.py::test_asyncio_run_leak: [[]warn[]] 'heartbeat'*",
        ]
    )


def test_a_bad_level_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = _run(pytester, "--task-leak-level=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --task-leak-level must be one of warn, fail, got 'loud'"])


def test_pytest_asyncio_and_anyio(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:run-parallel")
    pytester.makepyfile(test_plugins=PLUGINS)
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nfilterwarnings =\n    error\n"
        "    ignore:The configuration option:DeprecationWarning\n"
    )
    result = _run(pytester, "--task-leak-check", "-p", "asyncio", "-p", "anyio")
    # anyio's own runner task (it serves each test until the runner closes) is not the test's.
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*= pytest-netthreads =*",
            "asyncio task leaks: 2",
            "  test_plugins.py::test_pytest_asyncio_leak: 'pa-heartbeat' (coroutine heartbeat), "
            "created at test_plugins.py:* in test_pytest_asyncio_leak",
            "  test_plugins.py::test_anyio_leak: 'anyio-heartbeat' (coroutine heartbeat), "
            "created at test_plugins.py:* in test_anyio_leak",
        ]
    )


def test_the_marker_and_the_hook(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marked="""
        import asyncio

        import pytest


        async def main():
            asyncio.create_task(asyncio.sleep(3600), name="keepalive")
            asyncio.create_task(asyncio.sleep(3600), name="poller")
            await asyncio.sleep(0)


        @pytest.mark.allow_task_leak
        def test_all_allowed():
            asyncio.run(main())


        @pytest.mark.allow_task_leak("keepalive")
        def test_one_allowed():
            asyncio.run(main())


        @pytest.mark.allow_task_leak("(")
        def test_bad_pattern():
            asyncio.run(main())
        """
    )
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(optionalhook=True)
        def pytest_netthreads_task_leaks(config, node, owner, leaks):
            print(f"hook saw {[leak.description for leak in leaks]} for {owner}")
        """
    )
    result = _run(pytester, "--task-leak-check", "-s")
    result.assert_outcomes(passed=2, errors=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*hook saw [[]\"'poller' (coroutine sleep)\"[]] for test_marked.py::test_one_allowed",
            "*ERROR at teardown of test_one_allowed*",
            "1 asyncio task(s) created by test_marked.py::test_one_allowed left pending:",
            "--- task 'poller' (coroutine sleep), pending when its event loop began closing*",
        ]
    )
    assert "test_all_allowed left pending" not in out
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.allow_task_leak on test_marked.py::test_bad_pattern: '(' is not a "
            "valid regular expression*"
        ]
    )


def test_the_hang_report_shows_the_loops_and_await_chains(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_hang="""
        import asyncio


        async def wait_for_reply(reader):
            return await reader.readline()  # the server never answers


        def test_stuck(server_factory):
            import threading

            done = threading.Event()
            server = server_factory(lambda conn: done.wait(30))

            async def main():
                reader, writer = await asyncio.open_connection(*server.address)
                try:
                    await asyncio.create_task(wait_for_reply(reader), name="waiter")
                finally:
                    writer.close()
                    done.set()

            asyncio.run(main())
        """
    )
    result = _run(pytester, "--deadlock-timeout=1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Hang: test_hang.py::test_stuck hung in call: still running after 1s*",
            "Event loops running (each task's await chain, most recent call last):",
            "--- event loop _UnixSelectorEventLoop (id 0x*) in thread 'MainThread' (ident *): "
            "2 pending task(s)",
            "  task 'Task-1' (coroutine test_stuck.<locals>.main):",
            '    File "*test_hang.py", line *, in main',
            '      await asyncio.create_task(wait_for_reply(reader), name="waiter")',
            "      awaiting <Task pending name='waiter'*",
            "  task 'waiter' (coroutine wait_for_reply):",
            '    File "*test_hang.py", line *, in wait_for_reply',
            "      return await reader.readline()  # the server never answers",
            "*in _wait_for_data",
            "      awaiting <Future pending*",
        ]
    )


def test_loops_in_other_threads_and_wider_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_threads="""
        import asyncio
        import threading

        import pytest


        async def leave_one(name):
            asyncio.create_task(asyncio.sleep(3600), name=name)
            await asyncio.sleep(0)


        @pytest.fixture(scope="module")
        def service_loop():
            # A module's service: its loop and its tasks outlive each test on purpose.
            loop = asyncio.new_event_loop()
            started = threading.Event()
            loop.call_soon(started.set)
            thread = threading.Thread(target=loop.run_forever, name="service-loop")
            thread.start()
            assert started.wait(10)
            asyncio.run_coroutine_threadsafe(leave_one("service-task"), loop).result(10)
            yield loop
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()


        def test_background_thread_leaks(service_loop):
            thread = threading.Thread(
                target=asyncio.run, args=(leave_one("bg-task"),), name="bg-loop"
            )
            thread.start()
            thread.join(10)
            assert not thread.is_alive()
        """
    )
    result = _run(pytester, "--task-leak-check")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "1 asyncio task(s) created by test_threads.py::test_background_thread_leaks left "
            "pending:",
            "--- task 'bg-task' (coroutine sleep), pending when its event loop began closing "
            "(asyncio.run cancels such tasks) in thread 'bg-loop'",
        ]
    )
    assert "service-task" not in result.stdout.str()
