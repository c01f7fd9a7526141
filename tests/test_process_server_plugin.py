"""The process_server fixture: redis-server behind fault_proxy, and end to end with pytester
(logs in a failed test's report, start errors, a crash during the test, stop at teardown)."""

from __future__ import annotations

import shutil
import sys

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pytest_netthreads import faults

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

REDIS_SERVER = shutil.which("redis-server")
_SUBPROCESS_TIMEOUT = 120


@pytest.fixture
def redis_command() -> list[str]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    return [REDIS_SERVER, "--port", "{port}", "--bind", "{host}", "--save", "",
            "--appendonly", "no", "--dir", "{tmpdir}", "--protected-mode", "no"]


def _client(address: tuple[str, int], timeout: float = 10.0) -> redis.Redis:
    return redis.Redis(*address, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def test_redis_server_behind_the_fault_proxy(
    process_server, fault_proxy, redis_command: list[str]  # type: ignore[no-untyped-def]
) -> None:
    server = process_server(redis_command, ready_send=b"PING\r\n", ready_banner=rb"\+PONG")
    direct = _client(server.address)
    proxy = fault_proxy(server, seed=1)
    through = _client(proxy.address, timeout=1.0)
    try:
        direct.set("key", "value")
        assert through.get("key") == b"value"
        with proxy.add(faults.Timeout()):
            with pytest.raises(redis.exceptions.TimeoutError):
                through.get("key")
        through.close()
        with proxy.add(faults.ResetPeer()):
            with pytest.raises(redis.exceptions.ConnectionError):
                through.get("key")
        assert direct.get("key") == b"value"  # the server itself is fine
    finally:
        direct.close()
        through.close()


def test_the_fixture_end_to_end(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import os, sys
        import pytest

        PY = {sys.executable!r}
        SERVE = (
            "import socket, sys, time\\n"
            "srv = socket.create_server(('127.0.0.1', int(sys.argv[1])))\\n"
            "print('serving on', sys.argv[1], flush=True)\\n"
            "conn, _ = srv.accept()\\n"
            "if sys.argv[2] == 'crash': print('segfault, sort of', flush=True); sys.exit(9)\\n"
            "time.sleep(600)\\n"
        )
        PIDS = []

        def test_fails_and_shows_the_log(process_server):
            server = process_server([PY, "-c", SERVE, "{{port}}", "stay"])
            PIDS.append(server.pid)
            assert False, "the client got a wrong answer"

        def test_stopped_after_the_test():
            (pid,) = PIDS
            assert not os.path.exists(f"/proc/{{pid}}")

        def test_does_not_start(process_server):
            process_server([PY, "-c", "print('bad flag --prot'); raise SystemExit(2)", "{{port}}"])

        def test_crashes_during_the_test(process_server):
            import socket
            server = process_server([PY, "-c", SERVE, "{{port}}", "crash"], ready_connect=False,
                                    ready_log="serving")
            socket.create_connection(server.address, timeout=10).close()
            os.waitid(os.P_PID, server.pid, os.WEXITED | os.WNOWAIT)

        def test_bad_template(process_server):
            process_server([PY, "--port", "{{prot}}"])
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=_SUBPROCESS_TIMEOUT)
    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines(
        [
            "*_ test_fails_and_shows_the_log _*",
            "*AssertionError: the client got a wrong answer*",
            "*- process python* pid * log (call) -*",
            "serving on *",
            "*_ test_does_not_start _*",
            "*ProcessStartError: python* (pid *) exited with status 2 before it was ready",
            "command: *",
            "log:",
            "    bad flag --prot",
            "*_ test_crashes_during_the_test _*",
            "*ProcessServerError: python* (pid *) exited on its own with status 9 while the test*",
            "    segfault, sort of",
            "*_ test_bad_template _*",
            "*ValueError: command[[]2[]] uses the unknown placeholder {prot}*",
        ]
    )
