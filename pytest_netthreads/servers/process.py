"""Real server processes (``redis-server``, ``memcached``, your own) as test servers.

:class:`ProcessServer` starts a command on a free loopback port (or a Unix socket in a
private temporary directory), waits until it is ready, and stops it and everything it
started::

    with ProcessServer(["redis-server", "--port", "{port}", "--save", ""]) as redis:
        client = redis_lib.Redis(*redis.address)

Why a class for so little: each of these is a classic way for such a fixture to be flaky or
to leak, and each is handled here once:

- **The port race.** A free port is picked by binding port 0 and closing the socket; by the
  time the process binds it, another process may have taken it. The process then fails
  (its log says ``Address already in use``), or the readiness probe reaches the *other*
  process. Both are detected (the log, and on Linux the owner of the listening socket, read
  from ``/proc``) and the start is tried again on a new port, a bounded number of times.
- **Readiness**, not a sleep: a TCP (or Unix) connect, optionally a banner read on it (or a
  request and its answer), and/or a line in the process's log; bounded by ``start_timeout``.
  A process that exits or never becomes ready raises :class:`ProcessStartError` with its log.
- **The log** goes to a file (a pipe nobody reads fills up and blocks the server), and is
  kept, its tail at least, for the error or the failed test's report.
- **Stopping** signals the whole process group (the process is started in a session of its
  own, so whatever it forks is stopped too): ``SIGTERM``, then ``SIGKILL`` after
  ``stop_timeout``. The process is reaped (no zombie), its temporary directory removed, and
  no descriptor of it is left open in this process.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import signal
import socket
import string
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from .._runtime import values
from .._runtime.private_files import OwnedDirectory, remove_stale_directories

__all__ = ["ProcessServer", "ProcessServerError", "ProcessStartError"]

PLACEHOLDERS = ("host", "port", "unix", "tmpdir")
"""The names a command template may use: ``{host}``, ``{port}``, ``{unix}``, ``{tmpdir}``."""

DEFAULT_BIND_ERROR = r"(?i)address already in use|EADDRINUSE|errno 98\b"
"""What a log says when the process lost the race for its port (Linux, most servers)."""

LOG_TAIL_BYTES = 64 * 1024
"""How much of the end of the log is kept after stop and shown in errors and reports."""

_KILL_TIMEOUT = 5.0  # after SIGKILL: the kernel ends a process at once, unless it is in D state
_DIR_PREFIX = "netthreads-process-"
_stale_removed = False
_stale_lock = threading.Lock()


class ProcessServerError(Exception):
    """A server process failed: did not start, exited on its own, or would not die.

    ``log`` is the end of its log (``str``), ``returncode`` its exit status if it exited
    (negative: killed by that signal), ``None`` otherwise.
    """

    def __init__(self, message: str, *, log: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.log = log
        self.returncode = returncode


class ProcessStartError(ProcessServerError):
    """The process exited before it was ready, or was not ready within ``start_timeout``."""


class _PortTaken(Exception):
    """This attempt lost the race for its port; another attempt may win."""


def _check_command(command: object) -> list[str]:
    if isinstance(command, (str, bytes)) or not isinstance(command, Sequence):
        raise TypeError(
            "command must be a list of arguments (str or os.PathLike), e.g. "
            f"['redis-server', '--port', '{{port}}'] (shlex.split() a string), got {command!r}"
        )
    if not command:
        raise ValueError("command must not be empty")
    args: list[str] = []
    for i, arg in enumerate(command):
        if isinstance(arg, os.PathLike):
            arg = os.fspath(arg)
        if not isinstance(arg, str):
            raise TypeError(f"command[{i}] must be a str or os.PathLike, got {arg!r}")
        if "\0" in arg:
            raise ValueError(f"command[{i}] must not contain a NUL byte, got {arg!r}")
        args.append(arg)
    return args


def template_fields(command: Sequence[str]) -> set[str]:
    """The placeholders ``command`` uses; ``ValueError`` for an unknown or malformed one.

    ``{{`` and ``}}`` are a literal brace, as in :meth:`str.format`.
    """
    used: set[str] = set()
    for i, arg in enumerate(command):
        try:
            parsed = list(string.Formatter().parse(arg))
        except ValueError as exc:
            raise ValueError(
                f"command[{i}] is not a valid template ({exc}): {arg!r}; write a literal "
                "brace as {{ or }}"
            ) from None
        for _, field, spec, conversion in parsed:
            if field is None:
                continue
            if field not in PLACEHOLDERS:
                known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                raise ValueError(
                    f"command[{i}] uses the unknown placeholder {{{field}}} in {arg!r}; the "
                    f"placeholders are {known} (a literal brace is {{{{ or }}}})"
                )
            if spec or conversion:
                raise ValueError(
                    f"command[{i}]: {{{field}}} takes no conversion or format spec, got {arg!r}"
                )
            used.add(field)
    return used


def _check_pattern(value: object, what: str, kind: type) -> re.Pattern[Any] | None:
    if value is None:
        return None
    if isinstance(value, re.Pattern):
        if not isinstance(value.pattern, kind):
            raise TypeError(f"{what} must be a {kind.__name__} pattern, got {value!r}")
        return value
    if not isinstance(value, kind):
        raise TypeError(
            f"{what} must be a {kind.__name__} regular expression or re.Pattern, got {value!r}"
        )
    if not value:
        raise ValueError(f"{what} must not be empty (it would match at once)")
    try:
        return re.compile(value, re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"{what} is not a valid regular expression ({exc}): {value!r}") from None


def _check_env(env: object) -> dict[str, str] | None:
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, got {env!r}")
    checked: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env must map str to str, got {key!r}: {value!r}")
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"env has an invalid variable {key!r}={value!r}")
        checked[key] = value
    return checked


def _check_signal(value: object) -> signal.Signals:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"stop_signal must be a signal.Signals (or its number), got {value!r}")
    try:
        return signal.Signals(value)
    except ValueError:
        raise ValueError(f"stop_signal must be a valid signal number, got {value!r}") from None


def _check_count(value: object, what: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int from 0 to {maximum}, got {value!r}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{what} must be from 0 to {maximum}, got {value}")
    return value


class ProcessServer:
    """A server process on a free loopback port, ready when :meth:`start` returns.

    Args:
        command: the command, a list of arguments (no shell). Each may use the placeholders
            ``{port}`` (a free TCP port), ``{host}``, ``{unix}`` (a Unix socket path in a
            private temporary directory) and ``{tmpdir}`` (that directory, for data files);
            ``{{``/``}}`` for a literal brace.
        host: the loopback address the server is told (``{host}``) and probed on.
        port: ``0`` (default): a free port, picked again when the process loses the race
            for it; or a fixed port (no retry).
        ready_log: a regular expression: ready once a line of the log matches it.
        ready_connect: probe with a connect to ``{port}``/``{unix}``. Default: when the
            command uses one of them. A probe that reaches another process's listener on
            the port (Linux) counts as losing the race for it.
        ready_banner: a ``bytes`` regular expression the server must send on a probe
            connection (after ``ready_send``, if given) for it to be ready.
        ready_send: bytes sent on each probe connection first (``b"PING\\r\\n"``).
        start_timeout: seconds the process has to become ready.
        stop_timeout: seconds between ``stop_signal`` and ``SIGKILL`` at :meth:`stop`.
        stop_signal: the signal :meth:`stop` sends first (to the process group).
        bind_retries: how many more times to start the process on a new port when it lost
            the race for one (its log matches ``bind_error``, or another process has it).
        bind_error: a regular expression that a log line saying "this port is taken" matches.
        env: variables set for the process, on top of this process's environment.
        cwd: the directory it runs in (default: the temporary directory).
        name: a name for reports (default: the program's name).
    """

    def __init__(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ready_log: str | re.Pattern[str] | None = None,
        ready_connect: bool | None = None,
        ready_banner: bytes | re.Pattern[bytes] | None = None,
        ready_send: bytes | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        stop_signal: int = signal.SIGTERM,
        bind_retries: int = 3,
        bind_error: str | re.Pattern[str] = DEFAULT_BIND_ERROR,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.command_template = _check_command(command)
        self._fields = template_fields(self.command_template)
        self.family, self.host = values.resolve_host(host, 0, "host")
        self._fixed_port = values.port(port, "port")
        if self._fixed_port and "port" not in self._fields:
            raise ValueError(f"port={port} is given but the command does not use {{port}}")
        self._ready_log = _check_pattern(ready_log, "ready_log", str)
        self._ready_banner = _check_pattern(ready_banner, "ready_banner", bytes)
        if ready_send is not None and not isinstance(ready_send, bytes):
            raise TypeError(f"ready_send must be bytes, got {ready_send!r}")
        self._ready_send = ready_send
        has_socket = bool(self._fields & {"port", "unix"})
        if ready_connect is None:
            ready_connect = has_socket
        elif not isinstance(ready_connect, bool):
            raise TypeError(f"ready_connect must be a bool or None, got {ready_connect!r}")
        if (ready_connect or ready_banner is not None or ready_send is not None) and (
            not has_socket
        ):
            raise ValueError(
                "ready_connect, ready_banner and ready_send probe {port} or {unix}, which the "
                "command does not use"
            )
        if (ready_banner is not None or ready_send is not None) and ready_connect is False:
            raise ValueError("ready_banner and ready_send need ready_connect (not False)")
        self._ready_connect = ready_connect or ready_banner is not None
        if not self._ready_connect and self._ready_log is None:
            raise ValueError(
                "nothing tells when the process is ready: use {port} or {unix} in the command "
                "(a connect probe) or give ready_log"
            )
        self.start_timeout = values.seconds(
            start_timeout, "start_timeout", positive=True, maximum=values.MAX_TIMEOUT
        )
        self.stop_timeout = values.seconds(stop_timeout, "stop_timeout", maximum=values.MAX_TIMEOUT)
        self.stop_signal = _check_signal(stop_signal)
        self.bind_retries = _check_count(bind_retries, "bind_retries", 100)
        bind_pattern = _check_pattern(bind_error, "bind_error", str)
        if bind_pattern is None:
            raise TypeError("bind_error must be a str regular expression or re.Pattern, got None")
        self._bind_error = bind_pattern
        self._env = _check_env(env)
        if cwd is not None:
            if isinstance(cwd, os.PathLike):
                cwd = os.fspath(cwd)
            if not isinstance(cwd, str):
                raise TypeError(f"cwd must be a str or os.PathLike directory, got {cwd!r}")
            if not os.path.isdir(cwd):
                raise ValueError(f"cwd must be an existing directory, got {cwd!r}")
        self._cwd = cwd
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        self.name = name or os.path.basename(self.command_template[0])

        self.command: list[str] = []
        """The command last run (placeholders filled in)."""
        self.port: int = 0
        """The TCP port (``{port}``); 0 when the command does not use one."""
        self.unix_path: str | None = None
        """The Unix socket path (``{unix}``), else ``None``."""
        self.tmpdir: str | None = None
        """The private temporary directory (``{tmpdir}``) while running."""
        self.log_path: str | None = None
        """The log file (stdout and stderr) while running; removed at :meth:`stop`."""
        self.attempts = 0
        """How many times the process was started (more than 1: it lost a port race)."""
        self.returncode: int | None = None
        """Its exit status once it has exited (negative: killed by that signal)."""
        self.killed = False
        """Whether :meth:`stop` had to send ``SIGKILL``."""
        self.exited_early = False
        """Whether it exited on its own after it was ready, before :meth:`stop`."""
        self.was_ready = False
        """Whether :meth:`start` saw it ready (and returned)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._dir: OwnedDirectory | None = None
        self._log_tail = ""
        self._state = "new"
        self._lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The process id (also its process group id) while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def address(self) -> tuple[str, int] | str:
        """``(host, port)`` when the command uses ``{port}``, else the ``{unix}`` path."""
        if "port" in self._fields:
            return (self.host, self.port)
        if self.unix_path is not None:
            return self.unix_path
        raise AttributeError(f"{self.name}: the command uses neither {{port}} nor {{unix}}")

    def log(self) -> str:
        """The process's output so far (its end, after :meth:`stop`)."""
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                return _read_tail(self.log_path)
        return self._log_tail

    def start(self) -> ProcessServer:
        """Start the process and return once it is ready (``self``).

        Raises :class:`ProcessStartError` (with the log) when it exits first or is not ready
        within ``start_timeout``; ``FileNotFoundError`` when the program does not exist.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"{self.name}: start() was called already ({self._state})")
            self._state = "starting"
        _remove_stale_once()
        self._dir = OwnedDirectory(_DIR_PREFIX)
        self.tmpdir = self._dir.path
        deadline = time.monotonic() + self.start_timeout
        try:
            while True:
                self.attempts += 1
                try:
                    self._start_once(deadline)
                except _PortTaken as exc:
                    self._kill_group()
                    if self._fixed_port:
                        raise self._start_error(f"could not have port {self.port}: {exc}") from None
                    if self.attempts > self.bind_retries:
                        raise self._start_error(
                            f"lost the race for its port {self.attempts} time(s) "
                            f"(bind_retries={self.bind_retries}), the last time: {exc}"
                        ) from None
                    continue
                break
        except BaseException:
            self._kill_group()
            self._state = "stopped"
            self._cleanup()
            raise
        self._state = "running"
        self.was_ready = True
        return self

    def check(self) -> None:
        """Raise :class:`ProcessServerError` if the process exited on its own (a crash)."""
        if self._state == "running":
            status = self._exit_status()
            if status is not None:
                self.exited_early = True
        else:
            status = self.returncode
        if self.exited_early:
            raise ProcessServerError(
                f"{self.name} (pid {self.pid}) exited on its own with "
                f"{_describe_status(status)} while the test ran\n"
                f"command: {_format_command(self.command)}\n{_format_log(self.log())}",
                log=self.log(),
                returncode=status,
            )

    def stop(self) -> None:
        """Stop the process group: ``stop_signal``, ``SIGKILL`` after ``stop_timeout``.

        Reaps the process, removes the temporary directory (the log's end is kept:
        :meth:`log`). Idempotent. Raises :class:`ProcessServerError` when a process of the
        group survives ``SIGKILL`` (it stays in the kernel; it is named).
        """
        with self._lock:
            if self._state != "running":
                return
            self._state = "stopping"
        try:
            if self._exit_status() is not None:
                self.exited_early = True
            survivors = self._stop_group()
        finally:
            self._state = "stopped"
            self._cleanup()
        if survivors:
            raise ProcessServerError(
                f"{self.name}: process(es) {survivors} of its group survived SIGKILL",
                log=self._log_tail,
                returncode=self.returncode,
            )

    def __enter__(self) -> ProcessServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = ""
        if self.port:
            where = f"@{values.format_address((self.host, self.port))}"
        elif self.unix_path:
            where = f"@{self.unix_path}"
        return f"<ProcessServer {self.name}{where} pid={self.pid} {self._state}>"

    # -- starting -------------------------------------------------------------------------

    def _start_once(self, deadline: float) -> None:
        assert self._dir is not None
        if "port" in self._fields:
            self.port = self._fixed_port or _free_port(self.family, self.host)
        if "unix" in self._fields:
            self.unix_path = values.unix_path(os.path.join(self._dir.path, "server.sock"), "{unix}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)  # left by an earlier attempt
        fill = {"host": self.host, "port": str(self.port), "unix": self.unix_path or "",
                "tmpdir": self._dir.path}
        self.command = [arg.format(**fill) for arg in self.command_template]
        self.log_path = os.path.join(self._dir.path, f"attempt-{self.attempts}.log")
        env = None
        if self._env is not None:
            env = dict(os.environ)
            env.update(self._env)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=self._cwd or self._dir.path,
                env=env,
                start_new_session=True,  # its own process group: stop() signals all of it
            )
        finally:
            os.close(log_fd)
        # A server never stopped (forgotten, or this process exiting) is not left behind:
        # its group is killed when this object is collected, or at exit.
        self._finalizer = weakref.finalize(self, _kill_forgotten, self._proc, self._dir)
        self._pidfd = _pidfd_open(self._proc.pid)
        self._wait_ready(deadline)

    def _wait_ready(self, deadline: float) -> None:
        log_ready = self._ready_log is None
        delay = 0.005
        waiting_for = "its log to match ready_log" if not log_ready else "the probe"
        while True:
            text = self.log()
            status = self._exit_status()
            if "port" in self._fields and not self._fixed_port and self._bind_error.search(text):
                raise _PortTaken(f"its log matches bind_error {self._bind_error.pattern!r}")
            if status is not None:
                if "port" in self._fields and self._bind_error.search(text):
                    raise _PortTaken(f"its log matches bind_error {self._bind_error.pattern!r}")
                raise self._start_error(
                    f"exited with {_describe_status(status)} before it was ready", status
                )
            if not log_ready:
                assert self._ready_log is not None
                log_ready = self._ready_log.search(text) is not None
                if log_ready:
                    waiting_for = "the probe"
            if log_ready:
                if not self._ready_connect:
                    return
                outcome = self._probe(deadline)
                if outcome is None:
                    return
                waiting_for = f"the probe ({outcome})"
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._start_error(
                    f"was not ready within start_timeout={self.start_timeout:g} s, "
                    f"waiting for {waiting_for}"
                )
            self._wait_exit(min(delay, left))
            delay = min(delay * 2, 0.1)

    def _probe(self, deadline: float) -> str | None:
        """``None`` when the server is ready, else why not (raises ``_PortTaken``)."""
        address: Any
        if "port" in self._fields:
            family, address = self.family, (self.host, self.port)
        else:
            family, address = socket.AF_UNIX, self.unix_path
        timeout = max(0.05, min(1.0, deadline - time.monotonic()))
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(address)
            except OSError as exc:
                return f"connect to {values.format_address(address)}: {exc.strerror or exc}"
            if "port" in self._fields and not self._owns_listener():
                if self._exit_status() is not None:
                    return "it exited"  # the caller reports the exit
                raise _PortTaken(
                    f"another process listens on {values.format_address(address)}"
                )
            if self._ready_banner is None:
                return None
            received = b""
            try:
                if self._ready_send:
                    sock.sendall(self._ready_send)
                while self._ready_banner.search(received) is None:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return f"closed after {received[-200:]!r}, not matching ready_banner"
                    received += chunk
            except OSError as exc:
                return f"banner read: {exc} after {received[-200:]!r}"
        return None

    def _owns_listener(self) -> bool:
        """Whether the socket listening on our port belongs to the process group (Linux)."""
        listening = _listening_inodes(self.port)
        if listening is None:
            return True  # no /proc/net: cannot tell
        assert self._proc is not None
        return bool(listening & _group_socket_inodes(self._proc.pid))

    def _start_error(self, what: str, status: int | None = None) -> ProcessStartError:
        log = self.log()
        attempt = f" (attempt {self.attempts})" if self.attempts > 1 else ""
        return ProcessStartError(
            f"{self.name} (pid {self.pid}) {what}{attempt}\n"
            f"command: {_format_command(self.command)}\n{_format_log(log)}",
            log=log,
            returncode=status,
        )

    # -- the process ------------------------------------------------------------------------

    def _exit_status(self) -> int | None:
        """The leader's exit status if it has exited, without reaping it (its pid, which is
        the group's id, stays ours until :meth:`_reap`)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is not None:
            return proc.returncode
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return proc.poll()
        if info is None:
            return None
        if info.si_code == os.CLD_EXITED:
            return info.si_status
        return -info.si_status

    def _wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the leader to exit (not reaping it)."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while self._exit_status() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._pidfd is not None:
                select.select([self._pidfd], [], [], left)
            else:  # no pidfd (Linux < 5.3): a short backoff
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.05)
        return True

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _stop_group(self) -> list[int]:
        """Stop the group and reap the leader; the pids that survived SIGKILL."""
        proc = self._proc
        if proc is None:
            return []
        deadline = time.monotonic() + self.stop_timeout
        self._signal_group(self.stop_signal)
        graceful = self._wait_exit(self.stop_timeout)
        # The others of the group (forked workers) get the rest of the time too.
        while graceful and _group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not graceful or _group_members(proc.pid):
            self.killed = True
        return self._kill_group()

    def _kill_group(self) -> list[int]:
        """SIGKILL the group (the leader is still unreaped, so its id is still ours), reap."""
        proc = self._proc
        if proc is None:
            return []
        self._signal_group(signal.SIGKILL)
        deadline = time.monotonic() + _KILL_TIMEOUT
        self._wait_exit(_KILL_TIMEOUT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
        self.returncode = proc.returncode
        survivors = _group_members(proc.pid)
        while survivors and time.monotonic() < deadline:
            time.sleep(0.01)
            survivors = _group_members(proc.pid)
        if proc.returncode is None:
            survivors = [proc.pid, *survivors]
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        return survivors

    def _cleanup(self) -> None:
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self._log_tail = _read_tail(self.log_path)
        self.log_path = None
        if self._dir is not None:
            self._dir.remove()
            self._dir = None
        self.tmpdir = None


# -- helpers ---------------------------------------------------------------------------------


def _remove_stale_once() -> None:
    """Remove the directories of processes of this kind that were SIGKILLed (once a run)."""
    global _stale_removed
    with _stale_lock:
        if not _stale_removed:
            _stale_removed = True
            remove_stale_directories(_DIR_PREFIX)


def _kill_forgotten(proc: subprocess.Popen[bytes], directory: OwnedDirectory) -> None:
    """Kill and reap the group of a server that was never stopped (not a normal path), and
    remove its directory."""
    if proc.returncode is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_KILL_TIMEOUT)
    directory.remove()


def _free_port(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pidfd_open(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def _read_tail(path: str) -> str:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - LOG_TAIL_BYTES))
        data = f.read(LOG_TAIL_BYTES)
    text = data.decode("utf-8", "replace")
    if size > LOG_TAIL_BYTES:
        text = f"[... {size - LOG_TAIL_BYTES} earlier bytes not shown]\n" + text.split("\n", 1)[-1]
    return text


def _format_command(command: Sequence[str]) -> str:
    return shlex.join(command)


def _format_log(log: str, lines: int = 60) -> str:
    if not log.strip():
        return "log: (empty)"
    kept = log.rstrip("\n").split("\n")
    note = f" (last {lines} of {len(kept)} lines)" if len(kept) > lines else ""
    return f"log{note}:\n" + "\n".join("    " + line for line in kept[-lines:])


def _describe_status(status: int | None) -> str:
    if status is None:
        return "no status"
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


def _listening_inodes(port: int) -> set[int] | None:
    """The inodes of the TCP sockets listening on ``port`` (from ``/proc/net``), or ``None``
    when this system has no ``/proc/net/tcp``."""
    found: set[int] = set()
    seen_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        seen_table = True
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[9]))
    return found if seen_table else None


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        rest = stat[stat.rfind(b")") + 2 :].split()
        if len(rest) >= 3 and int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
            pids.append(int(entry))
    return sorted(pids)


def _group_socket_inodes(pgid: int) -> set[int]:
    inodes: set[int] = set()
    for pid in _group_members(pgid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes

