"""Each module here is buggy on purpose; these tests run it and check that the bug is caught.

The buggy modules are not named ``test_*.py``, so ``pytest examples`` does not collect them
as failing tests. ``run_buggy`` (``conftest.py``) copies one into a scratch directory and runs
``pytest examples/buggy/<module>`` there in a process of its own, bounded by a timeout, with
the detector it needs; each test asserts the outcome and the key lines of the report a user
sees. Run one yourself to see the whole report, e.g.
``pytest --lock-order-check examples/buggy/abba_locks.py``.
"""

from __future__ import annotations

BUGGY = "examples/buggy/"


def test_busy_loop_is_caught_by_the_bounded_stop(run_buggy):
    result = run_buggy("spinning_echo.py")
    # The test itself passes; stopping its server fails the teardown.
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_echo_once*",
        "ServerStopTimeout: server spinning_echo@127.0.0.1:*: 1 worker thread(s) still "
        "running 0.5s after stop() (left running as daemon threads):",
        "--- thread 'netthreads[[]spinning_echo@127.0.0.1:*[]]#0', current stack:",
        '  File "*/examples/buggy/spinning_echo.py", line *, in spinning_echo',
    ])


def test_unjoined_thread_is_caught_by_the_thread_leak_check(run_buggy):
    result = run_buggy("unjoined_worker.py", "--thread-leak-check", "--thread-leak-grace=0.2")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_publish_then_close*",
        f"1 thread(s) started by {BUGGY}unjoined_worker.py::test_publish_then_close still "
        "running 0.2s after its teardown:",
        "--- thread 'event-publisher' (daemon), target "
        "unjoined_worker.EventPublisher._send_events",
        "started at */unjoined_worker.py:* in __init__",
        "start stack (most recent call last):",
        "    publisher = EventPublisher(sink.address)",
        "current stack (most recent call last):",
        '  File "*/unjoined_worker.py", line *, in _send_events',
        "    event = self.events.get()",
    ])


def test_a_fixture_leaking_in_every_test_is_reported_once_in_full(run_buggy):
    result = run_buggy(
        "shared_client_fixture.py", "--thread-leak-check", "--thread-leak-grace=0.2", summary=True
    )
    result.assert_outcomes(passed=3, errors=3)
    module = f"{BUGGY}shared_client_fixture.py"
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_counts_a_login*",
        "--- thread 'stats-heartbeat' (daemon), target "
        "shared_client_fixture.StatsClient._beat",
        "started at */shared_client_fixture.py:* in __init__",
        f"started by {module}:* in stats",
        "start stack (most recent call last):",
        "*ERROR at teardown of test_counts_a_logout*",
        f"started by {module}:* in stats",
        f"(stacks as in the report for {module}::test_counts_a_login: same target and start "
        "site)",
        "*= pytest-netthreads =*",
        "thread leaks: 3 (1 distinct)",
        "  'stats-heartbeat' (shared_client_fixture.StatsClient._beat, daemon), started at "
        f"{module}:* in __init__, started by {module}:* in stats: in 3 tests",
        f"    {module}::test_counts_a_login",
        f"    {module}::test_counts_a_logout",
        f"    {module}::test_counts_an_error",
    ])
    # Counted in the reports above the short summary: on CI (the CI variable set) pytest prints
    # each error's whole message there too, as it chooses to.
    reports = result.stdout.str().split("short test summary info")[0]
    assert reports.count("start stack (most recent call last):") == 1


def test_unclosed_pool_is_caught_by_the_socket_leak_check(run_buggy):
    result = run_buggy("leaky_pool.py", "--socket-leak-check")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_pool_round_trip*",
        f"1 socket(s) created by {BUGGY}leaky_pool.py::test_pool_round_trip still open after "
        "its teardown:",
        "--- socket fd=* AF_INET SOCK_STREAM 127.0.0.1:* -> 127.0.0.1:*",
        "created at */leaky_pool.py:* in request",
        "    sock = socket.create_connection(self.address, timeout=5)",
    ])


def test_dropped_connection_is_caught_by_the_collected_socket_check(run_buggy):
    result = run_buggy("dropped_connection.py", "--socket-leak-collected")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_ask*",
        f"1 socket(s) created by {BUGGY}dropped_connection.py::test_ask garbage-collected "
        "without being closed (Python closed them, with a ResourceWarning):",
        "--- socket fd=* AF_INET SOCK_STREAM 127.0.0.1:* -> 127.0.0.1:*",
        "created at */dropped_connection.py:* in ask",
        "    sock = socket.create_connection(address, timeout=5)  # BUG: never closed",
    ])


def test_abba_order_is_caught_by_the_lock_order_check(run_buggy):
    result = run_buggy("abba_locks.py", "--lock-order-check")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_transfer_then_audit _*",
        "Lock-order inversion (potential deadlock) between 2 lock classes: */abba_locks.py:* "
        "-> */abba_locks.py:* -> back to the first.",
        "order 1:",
        "  thread 'MainThread' acquired",
        "    Lock created at */abba_locks.py:* in __init__",
        "      at */abba_locks.py:* in audit",
        "    while holding Lock created at */abba_locks.py:* in __init__",
        "order 2:",
        "  thread 'payer' acquired",
        "      at */abba_locks.py:* in transfer",
    ])


def test_join_under_lock_is_caught_by_the_deadlock_detector(run_buggy):
    # The deadline is far: the cycle is reported the moment it closes, not at the timeout.
    result = run_buggy("join_under_lock.py", "--deadlock-timeout=30")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_send_then_close _*",
        f"Deadlock: a wait-for cycle of 2 threads formed in "
        f"{BUGGY}join_under_lock.py::test_send_then_close:",
    ])
    # The cycle is listed from the thread that closed it, which depends on timing.
    result.stdout.fnmatch_lines([
        "  thread 'batch-sender' waits for Lock created at */join_under_lock.py:* in __init__",
        "      waiting since *s, called at */join_under_lock.py:* in _run",
        "      held by thread 'MainThread', acquired at */join_under_lock.py:* in close",
    ])
    result.stdout.fnmatch_lines([
        "  thread 'MainThread' waits for thread 'batch-sender' to finish (Thread.join)",
        "      waiting since *s, called at */join_under_lock.py:* in close",
    ])
    assert "still running after" not in result.stdout.str()  # not the hang watchdog


def test_missing_read_timeout_is_caught_with_a_timeout_fault_and_the_watchdog(run_buggy):
    result = run_buggy("no_read_timeout.py", "--deadlock-timeout=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_a_silent_network_is_a_timeout _*",
        f"Hang: {BUGGY}no_read_timeout.py::test_a_silent_network_is_a_timeout hung in call: still "
        "running after 2s (--deadlock-timeout); no wait-for cycle among tracked locks and joins.",
        "--- thread 'MainThread' (ident *):",
        '  File "*/no_read_timeout.py", line *, in get',
        "    chunk = sock.recv(4096)",
        "*fault proxy*seed=*, 1 event(s)",
        "  #0 downstream @0: drop from here Timeout(after_bytes=0, *",
    ])


def test_one_recv_per_message_is_caught_by_recv_chunks_and_slice(run_buggy):
    result = run_buggy("one_recv_one_message.py")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*_ test_reply_in_pieces _*",
        "E * assert 'VALUE ' == 'VALUE hello world'",
        "*_ test_reply_through_a_slicing_proxy _*",
        "E * assert 'VALUE ' == 'VALUE hello world'",
        "  #0 downstream @0: applied Slice(size=6, *",
    ])


def test_forgotten_task_is_caught_by_the_task_leak_check(run_buggy):
    result = run_buggy("forgotten_heartbeat.py", "--task-leak-check")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_ask_once*",
        f"1 asyncio task(s) created by {BUGGY}forgotten_heartbeat.py::test_ask_once left "
        "pending:",
        "--- task 'heartbeat' (coroutine Client._heartbeat), pending when its event loop began "
        "closing (asyncio.run cancels such tasks) in thread 'MainThread'",
        "created at */forgotten_heartbeat.py:* in connect",
        "await chain when it was seen pending (most recent call last):",
        '  File "*/forgotten_heartbeat.py", line *, in _heartbeat',
        "    await asyncio.sleep(30)",
    ])


def test_await_without_timeout_shows_its_await_chain_in_the_hang_report(run_buggy):
    result = run_buggy("await_without_timeout.py", "--deadlock-timeout=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_a_silent_network_is_a_timeout _*",
        f"Hang: {BUGGY}await_without_timeout.py::test_a_silent_network_is_a_timeout hung in "
        "call: still running after 2s (--deadlock-timeout); no wait-for cycle among tracked "
        "locks and joins.",
        "Event loops running (each task's await chain, most recent call last):",
        "--- event loop _UnixSelectorEventLoop (id 0x*) in thread 'MainThread' (ident *): "
        "1 pending task(s)",
        "  task 'Task-1' (coroutine get):",
        '    File "*/await_without_timeout.py", line *, in get',
        "      reply = await reader.readline()  # BUG: no timeout",
    ])
