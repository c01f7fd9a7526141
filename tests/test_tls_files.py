"""The CA's key files on disk: removed after a killed process, at SIGTERM, never another
live process's; through real processes (SIGKILL, SIGTERM, fork) and real pytest sessions."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

pytest_plugins = ["pytester"]

TIMEOUT = 120  # seconds: bound of every wait for another process

# Makes a CA with files on disk, prints their directory, then waits for a line on its stdin:
# "_exit" ends it with os._exit (what the hang watchdog's last resort does); end of file
# closes the CA first.
HOLDER = """
import os, sys
from pytest_netthreads.tls import CertificateAuthority
ca = CertificateAuthority()
ca.server_cert_files()
print(ca.files_dir, flush=True)
if sys.stdin.readline().strip() == "_exit":
    os._exit(70)
ca.close()
"""


def read_line(stream: IO[bytes], timeout: float = TIMEOUT) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"nothing to read within {timeout}s"
    return stream.readline().decode().strip()


class Holders:
    """Processes holding a CA with files; each one ended by its pid at teardown."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> tuple[subprocess.Popen[bytes], str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        files_dir = read_line(proc.stdout)
        assert os.path.isdir(files_dir), files_dir
        return proc, files_dir

    def stop(self, proc: subprocess.Popen[bytes], line: bytes = b"") -> int:
        """Let it close its CA and exit (or send it ``line`` first)."""
        assert proc.stdin is not None
        proc.stdin.write(line)
        proc.stdin.close()
        return proc.wait(TIMEOUT)

    def end_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(TIMEOUT)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture
def private_tmp(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of this test's own, the ``TMPDIR`` of the processes it starts
    (so that they never see, nor sweep, other test runs' directories)."""
    tmp = pytester.path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp


@pytest.fixture
def holders(private_tmp: Path) -> Iterator[Holders]:
    started = Holders(dict(os.environ))
    yield started
    started.end_all()


def test_files_of_killed_processes_are_removed_when_a_session_starts(
    pytester: pytest.Pytester, private_tmp: Path, holders: Holders
) -> None:
    # The live holder starts first: its own CA's sweep runs before the others exist.
    live, live_dir = holders.start()
    dead, dead_dir = holders.start()
    exited, exited_dir = holders.start()
    dead.kill()
    assert dead.wait(TIMEOUT) == -signal.SIGKILL
    assert holders.stop(exited, b"_exit\n") == 70
    # What they leave behind: private keys.
    assert os.path.isdir(dead_dir) and os.path.isdir(exited_dir)
    assert os.path.basename(dead_dir).startswith(f"netthreads-tls-{dead.pid}-")

    # Never removed, though named like ours: a directory without a lock file (one being
    # made at this instant looks the same), and a symbolic link to a dead one elsewhere.
    unlocked = private_tmp / f"netthreads-tls-{dead.pid}-nolock"
    unlocked.mkdir()
    (unlocked / "valid.key").write_bytes(b"")
    elsewhere = pytester.path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".owner.lock").write_bytes(b"")
    (private_tmp / f"netthreads-tls-{dead.pid}-link").symlink_to(elsewhere)
    if os.geteuid() == 0:  # another user's stale directory (only root can make one)
        theirs = private_tmp / f"netthreads-tls-{dead.pid}-theirs"
        theirs.mkdir()
        (theirs / ".owner.lock").write_bytes(b"")
        os.chown(theirs, 65534, 65534)

    pytester.makepyfile(
        """
        def test_uses_the_ca(tls_ca):
            tls_ca.ca_bundle_path()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=TIMEOUT)
    result.assert_outcomes(passed=1)

    assert not os.path.exists(dead_dir)
    assert not os.path.exists(exited_dir)
    assert sorted(os.listdir(live_dir)) == [".owner.lock", "valid.crt", "valid.key"]
    assert (unlocked / "valid.key").exists()
    assert (elsewhere / ".owner.lock").exists()
    assert holders.stop(live) == 0
    assert not os.path.exists(live_dir)
    left = {p.name.rsplit("-", 1)[1] for p in private_tmp.iterdir()}
    assert left == ({"nolock", "link", "theirs"} if os.geteuid() == 0 else {"nolock", "link"})


def test_sigterm_ends_the_session_with_its_teardown_and_removes_the_files(
    pytester: pytest.Pytester, private_tmp: Path
) -> None:
    pytester.makepyfile(
        """
        import os, threading

        def test_waits_for_sigterm(tls_ca, tls_echo_server):
            tls_ca.server_cert_files()
            os.write(int(os.environ["NETTHREADS_READY_FD"]), tls_ca.files_dir.encode() + b"\\n")
            threading.Event().wait(120)
            raise AssertionError("no SIGTERM came")
        """
    )
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb") as ready:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error"],
            cwd=pytester.path,
            env={**os.environ, "NETTHREADS_READY_FD": str(write_fd)},
            pass_fds=(write_fd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        os.close(write_fd)
        try:
            files_dir = read_line(ready)
            assert os.path.isdir(files_dir)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=TIMEOUT)
    text = out.decode(errors="replace")
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "Exit: pytest-netthreads: received SIGTERM" in text
    assert not os.path.exists(files_dir)
    assert list(private_tmp.iterdir()) == []


def test_sigterm_handler_only_over_the_default_and_restored_at_the_end(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A conftest clean-up registered at configure runs after the plugin's own clean-ups.
    pytester.makeconftest(
        """
        import os, signal

        def pytest_configure(config):
            if os.environ.get("OWN_HANDLER"):
                signal.signal(signal.SIGTERM, own_handler)

            def after():
                with open("after.txt", "w") as f:
                    f.write(repr(signal.getsignal(signal.SIGTERM)))
            config.add_cleanup(after)

        def own_handler(signum, frame):
            pass
        """
    )
    pytester.makepyfile(
        """
        import os, signal
        import conftest

        def test_handler(tls_ca):
            handler = signal.getsignal(signal.SIGTERM)
            if os.environ.get("OWN_HANDLER"):
                assert handler is conftest.own_handler
            else:
                assert callable(handler) and handler.__module__ == "pytest_netthreads.plugin._tls"
        """
    )
    args = ("-p", "no:cacheprovider", "-W", "error")
    pytester.runpytest_subprocess(*args, timeout=TIMEOUT).assert_outcomes(passed=1)
    assert (pytester.path / "after.txt").read_text() == repr(signal.SIG_DFL)
    monkeypatch.setenv("OWN_HANDLER", "1")
    pytester.runpytest_subprocess(*args, timeout=TIMEOUT).assert_outcomes(passed=1)
    assert (pytester.path / "after.txt").read_text().startswith("<function own_handler")


def test_a_forked_child_leaves_its_parents_files(private_tmp: Path) -> None:
    script = """
import os
from pytest_netthreads.tls import CertificateAuthority
ca = CertificateAuthority()
path = ca.ca_bundle_path()
pid = os.fork()
if pid == 0:
    ca.close()  # the child's copy of the CA: the files are the parent's
    os._exit(0)
os.waitpid(pid, 0)
print(os.path.exists(path))
ca.close()
print(os.path.exists(path))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
