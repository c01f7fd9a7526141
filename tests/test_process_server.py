"""ProcessServer: real processes on a free port, readiness, logs, the port race, stopping the
whole process group, and no process, zombie or descriptor left behind."""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from pytest_netthreads import ProcessServer, ProcessServerError, ProcessStartError
from tests._util import connect, recv_exactly

PY = sys.executable

# A TCP echo server on argv[1] (a port) or a Unix path; prints "listening" once it listens.
ECHO = """
import socket, sys, threading
where = sys.argv[1]
if where.isdigit():
    srv = socket.create_server(("127.0.0.1", int(where)))
else:
    srv = socket.socket(socket.AF_UNIX); srv.bind(where); srv.listen()
print("listening", flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            if data == b"PING\\r\\n":
                data = b"+PONG\\r\\n"
            conn.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not: it is gone, only unreaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def echo_round_trip(address: object) -> bytes:
    with connect(address) as sock:
        sock.sendall(b"hello")
        return recv_exactly(sock, 5)


def test_starts_on_a_free_port_and_leaves_nothing_behind(no_thread_or_fd_leak: None) -> None:
    # The server forks a worker into its process group, as real servers do.
    code = ECHO.replace(
        'print("listening", flush=True)',
        'import subprocess\n'
        'w = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])\n'
        'print("worker", w.pid, flush=True)\nprint("listening", flush=True)',
    )
    with ProcessServer([PY, "-c", code, "{port}"], ready_log="^listening$") as server:
        assert server.address == ("127.0.0.1", server.port) and server.port > 0
        assert echo_round_trip(server.address) == b"hello"
        leader = server.pid
        assert leader is not None
        worker = int(server.log().split("worker ")[1].split()[0])
        assert alive(leader) and alive(worker)
        tmpdir = server.tmpdir
        assert tmpdir is not None and os.path.isdir(tmpdir)
    assert not exists(leader)  # reaped: no zombie
    assert not alive(worker)  # the group was signalled, not only the leader
    assert server.returncode == -signal.SIGTERM and not server.killed
    assert not os.path.exists(tmpdir)
    assert "listening" in server.log()  # the log's end is kept after stop


def test_a_unix_socket_server(no_thread_or_fd_leak: None) -> None:
    with ProcessServer([PY, "-c", ECHO, "{unix}"]) as server:
        assert isinstance(server.address, str) and server.address.endswith("server.sock")
        assert echo_round_trip(server.address) == b"hello"


def test_a_banner_probe() -> None:
    server = ProcessServer(
        [PY, "-c", ECHO, "{port}"], ready_send=b"PING\r\n", ready_banner=rb"\+PONG"
    )
    with server:
        assert echo_round_trip(server.address) == b"hello"


def test_ready_by_its_log_alone() -> None:
    code = "import time; print('booting'); print('up and running', flush=True); time.sleep(600)"
    with ProcessServer([PY, "-c", code], ready_log=r"up and \w+") as server:
        with pytest.raises(AttributeError, match="neither"):
            server.address  # noqa: B018
        assert "booting" in server.log()


def test_sigterm_ignored_then_sigkill(no_thread_or_fd_leak: None) -> None:
    code = ECHO.replace(
        "import socket, sys, threading",
        "import signal, socket, sys, threading\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)",
    )
    server = ProcessServer([PY, "-c", code, "{port}"], stop_timeout=0.5).start()
    pid = server.pid
    assert pid is not None
    server.stop()
    assert server.killed and server.returncode == -signal.SIGKILL
    assert not exists(pid)
    server.stop()  # idempotent


def test_a_command_that_exits_at_once(no_thread_or_fd_leak: None) -> None:
    code = "import sys; print('fatal: no such config file /etc/x.conf', flush=True); sys.exit(3)"
    server = ProcessServer([PY, "-c", code, "{port}"], name="broken")
    with pytest.raises(ProcessStartError) as info:
        server.start()
    message = str(info.value)
    assert "broken (pid " in message
    assert "exited with status 3 before it was ready" in message
    assert "fatal: no such config file /etc/x.conf" in message  # the log, in the error
    assert "command: " in message and "{port}" not in message.split("command: ")[1]
    assert info.value.returncode == 3 and "no such config" in info.value.log
    assert server.tmpdir is None and server.attempts == 1
    with pytest.raises(RuntimeError, match="start\\(\\) was called already"):
        server.start()


def test_a_command_that_never_becomes_ready(no_thread_or_fd_leak: None) -> None:
    code = "import time; print('loading dataset...', flush=True); time.sleep(600)"
    server = ProcessServer([PY, "-c", code, "{port}"], start_timeout=0.5)
    with pytest.raises(ProcessStartError) as info:
        server.start()
    message = str(info.value)
    assert "was not ready within start_timeout=0.5 s, waiting for the probe (connect to" in message
    assert "loading dataset..." in message
    pid = server.pid
    assert pid is not None and not exists(pid)  # killed and reaped


def test_waiting_for_a_log_line_that_never_comes() -> None:
    code = "import time; print('hello', flush=True); time.sleep(600)"
    server = ProcessServer([PY, "-c", code], ready_log="^ready$", start_timeout=0.3)
    with pytest.raises(ProcessStartError, match="waiting for its log to match ready_log"):
        server.start()


def test_a_missing_program() -> None:
    server = ProcessServer(["/nonexistent/redis-server", "--port", "{port}"])
    with pytest.raises(FileNotFoundError):
        server.start()
    assert server.tmpdir is None


def test_a_lost_port_race_is_retried_on_a_new_port(tmp_path: Path) -> None:
    # The first run behaves like a server whose port was taken in between (the log line is
    # what Python prints); the second one serves.
    marker = tmp_path / "first-run-done"
    code = (
        "import os, sys\n"
        f"marker = {str(marker)!r}\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    print('OSError: [Errno 98] Address already in use', flush=True)\n"
        "    sys.exit(1)\n" + ECHO
    )
    with ProcessServer([PY, "-c", code, "{port}"]) as server:
        assert server.attempts == 2
        assert echo_round_trip(server.address) == b"hello"


def test_retries_are_bounded(tmp_path: Path) -> None:
    code = "import sys; print('bind: Address already in use', flush=True); sys.exit(1)"
    server = ProcessServer([PY, "-c", code, "{port}"], bind_retries=2)
    with pytest.raises(ProcessStartError, match=r"lost the race for its port 3 time\(s\)"):
        server.start()
    assert server.attempts == 3


def test_a_listener_of_another_process_is_not_taken_for_ready() -> None:
    # Someone else listens on the port; the process under test never binds. Without the
    # owner check the connect probe would say "ready".
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        code = "import time; time.sleep(600)"
        server = ProcessServer([PY, "-c", code, "{port}"], port=port, start_timeout=10)
        with pytest.raises(ProcessStartError) as info:
            server.start()
    assert f"could not have port {port}: another process listens on 127.0.0.1:{port}" in str(
        info.value
    )


def test_exiting_during_the_test_is_reported() -> None:
    code = ECHO.replace("    conn, _ = srv.accept()", "    conn, _ = srv.accept(); sys.exit(7)")
    server = ProcessServer(
        [PY, "-c", code, "{port}"], ready_log="listening", ready_connect=False
    ).start()
    try:
        with connect(server.address):
            pass
        assert server._wait_exit(10)  # it exits on its first connection
        with pytest.raises(ProcessServerError, match="exited on its own with status 7"):
            server.check()
    finally:
        server.stop()
    assert server.exited_early and server.returncode == 7


@pytest.mark.parametrize(
    ("command", "error", "match"),
    [
        ("redis-server --port {port}", TypeError, "command must be a list of arguments"),
        ([], ValueError, "command must not be empty"),
        ([PY, 5], TypeError, r"command\[1\] must be a str or os.PathLike, got 5"),
        ([PY, "a\0b"], ValueError, r"command\[1\] must not contain a NUL byte"),
        ([PY, "--port", "{prot}"], ValueError, r"command\[2\] uses the unknown placeholder "
         r"\{prot\} in '\{prot\}'; the placeholders are \{host\}, \{port\}, \{unix\}, \{tmpdir\}"),
        ([PY, "--port={port"], ValueError, r"command\[1\] is not a valid template"),
        ([PY, "{}"], ValueError, r"unknown placeholder \{\}"),
        ([PY, "{port!r}"], ValueError, r"\{port\} takes no conversion or format spec"),
        ([PY, "{port:>8}"], ValueError, r"\{port\} takes no conversion or format spec"),
        ([PY, "-c", "pass"], ValueError, "nothing tells when the process is ready"),
    ],
)
def test_bad_commands(command: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ProcessServer(command)  # type: ignore[arg-type]


def test_literal_braces_are_kept() -> None:
    code = "import sys, time; print(sys.argv[1], flush=True); time.sleep(600)"
    with ProcessServer([PY, "-c", code, "{{x}}={tmpdir}"], ready_log="x") as server:
        assert server.command[-1] == f"{{x}}={server.tmpdir}"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"start_timeout": math.nan}, ValueError, "start_timeout must be a finite number"),
        ({"start_timeout": math.inf}, ValueError, "start_timeout must be a finite number"),
        ({"start_timeout": 0}, ValueError, "start_timeout must be a finite number"),
        ({"start_timeout": "5"}, TypeError, "start_timeout must be a finite number"),
        ({"start_timeout": 10**400}, ValueError, "start_timeout must be a finite number"),
        ({"stop_timeout": -1}, ValueError, "stop_timeout must be a finite number"),
        ({"stop_timeout": True}, TypeError, "stop_timeout must be a finite number"),
        ({"port": 70000}, ValueError, "port must be from 0 to 65535"),
        ({"port": "80"}, TypeError, "port must be an int"),
        ({"host": 1}, TypeError, "host must be a str"),
        ({"host": "no such host.invalid"}, ValueError, "host="),
        ({"bind_retries": -1}, ValueError, "bind_retries must be from 0 to 100"),
        ({"bind_retries": 10**9}, ValueError, "bind_retries must be from 0 to 100"),
        ({"bind_retries": 1.5}, TypeError, "bind_retries must be an int"),
        ({"stop_signal": 999}, ValueError, "stop_signal must be a valid signal number"),
        ({"stop_signal": "TERM"}, TypeError, "stop_signal must be a signal.Signals"),
        ({"ready_log": 5}, TypeError, "ready_log must be a str regular expression"),
        ({"ready_log": ""}, ValueError, "ready_log must not be empty"),
        ({"ready_log": "("}, ValueError, "ready_log is not a valid regular expression"),
        ({"ready_banner": "PONG"}, TypeError, "ready_banner must be a bytes regular expression"),
        ({"ready_send": "PING"}, TypeError, "ready_send must be bytes"),
        ({"ready_connect": 1}, TypeError, "ready_connect must be a bool or None"),
        ({"ready_banner": b"x", "ready_connect": False}, ValueError, "need ready_connect"),
        ({"bind_error": None}, TypeError, "bind_error must be a str regular expression"),
        ({"env": {"A": 1}}, TypeError, "env must map str to str"),
        ({"env": {"A=B": "1"}}, ValueError, "env has an invalid variable"),
        ({"env": ["A"]}, TypeError, "env must be a mapping"),
        ({"cwd": "/nonexistent-dir"}, ValueError, "cwd must be an existing directory"),
        ({"cwd": 3}, TypeError, "cwd must be a str or os.PathLike"),
        ({"name": b"x"}, TypeError, "name must be a str"),
    ],
)
def test_bad_options(options: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ProcessServer([PY, "-c", ECHO, "{port}"], **options)  # type: ignore[arg-type]


def test_options_that_need_a_socket_placeholder() -> None:
    with pytest.raises(ValueError, match="port=8080 is given but the command does not use"):
        ProcessServer([PY, "-c", "pass"], port=8080, ready_log="x")
    with pytest.raises(ValueError, match="which the command does not use"):
        ProcessServer([PY, "-c", "pass"], ready_log="x", ready_banner=b"x")


def test_env_and_cwd(tmp_path: Path) -> None:
    code = "import os, time; print(os.environ['NT_X'], os.getcwd(), flush=True); time.sleep(600)"
    with ProcessServer([PY, "-c", code], ready_log="^v ", env={"NT_X": "v"}, cwd=tmp_path) as s:
        assert s.log().split() == ["v", str(tmp_path)]


def test_a_banner_that_never_comes() -> None:
    # Accepts and closes at once: connectable, but never says PONG.
    code = ECHO.replace("            conn.sendall(data)", "            break")
    server = ProcessServer(
        [PY, "-c", code, "{port}"], ready_send=b"PING\r\n", ready_banner=rb"\+PONG",
        start_timeout=0.5,
    )
    with pytest.raises(ProcessStartError, match="not matching ready_banner"):
        server.start()


def test_a_forgotten_server_is_killed_when_collected() -> None:
    import gc

    server = ProcessServer([PY, "-c", ECHO, "{port}"]).start()
    pid, tmpdir = server.pid, server.tmpdir
    assert pid is not None and alive(pid) and tmpdir is not None
    del server
    gc.collect()
    assert not exists(pid)  # killed and reaped
    assert not os.path.exists(tmpdir)
