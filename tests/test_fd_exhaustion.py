"""Descriptor exhaustion (EMFILE): back off, count it once, resume when descriptors are free.

The server (or proxy) runs in a child process with a low descriptor limit, so that using
every descriptor up harms nothing else; the test connects from outside and drives the child
through its standard input, one command a line.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from tests._util import recv_exactly

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time
    from pytest_netthreads import ThreadedServer, handlers
    from pytest_netthreads.faults import FaultProxy

    kind, concurrency = sys.argv[1], sys.argv[2]
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    server = ThreadedServer(handlers.echo, concurrency=concurrency).start()
    front = FaultProxy(server).start() if kind == "proxy" else server
    hoard = []

    def reply(obj):
        print(json.dumps(obj), flush=True)

    reply(front.address)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "fill":
            try:
                while True:
                    hoard.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                reply(exc.errno)
        elif command[0] == "hold":  # keep every descriptor in use for a while
            cpu = time.process_time()
            time.sleep(float(command[1]))
            reply(time.process_time() - cpu)
        elif command[0] == "free":
            while hoard:
                os.close(hoard.pop())
            reply("freed")
        elif command[0] == "errors":
            reply([str(e) for e in front.errors])
        elif command[0] == "stop":
            try:
                front.stop()
                if front is not server:
                    server.stop()
            except Exception as exc:
                reply(f"{type(exc).__name__}: {exc}")
            else:
                reply("stopped")
            break
    """
)


class Child:
    def __init__(self, kind: str, concurrency: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, concurrency],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.address = tuple(self.read())

    def read(self) -> object:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the child exited with {self.proc.wait(10)}"
        return json.loads(line)

    def ask(self, command: str) -> object:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("kind", "concurrency"),
    [("server", "thread"), ("server", "pool"), ("server", "selector"), ("proxy", "selector")],
)
def test_emfile_backs_off_is_counted_once_and_accepting_resumes(
    kind: str, concurrency: str
) -> None:
    child = Child(kind, concurrency)
    try:
        assert child.ask("fill") == 24  # EMFILE
        with socket.create_connection(child.address, timeout=30) as client:  # type: ignore[arg-type]
            client.sendall(b"waited")
            # A second of exhaustion: a retry loop would try (and record) thousands of times.
            cpu = child.ask("hold 1.0")
            errors = child.ask("errors")
            assert isinstance(errors, list) and len(errors) == 1, errors
            match = re.search(r"accept\(\) failed (\d+) time\(s\) with EMFILE", errors[0])
            assert match, errors
            assert 1 <= int(match.group(1)) <= 40, errors  # backed off: ~10 tries a second
            assert child.ask("free") == "freed"
            # Descriptors are free again: the waiting client is served.
            assert recv_exactly(client, 6) == b"waited"
        outcome = child.ask("stop")
        assert isinstance(outcome, str)
        assert "accept() failed" in outcome  # the condition fails the owner at stop()
        print(f"{kind}/{concurrency}: {match.group(1)} tries, {cpu:.3f} s CPU in 1 s held")
    finally:
        child.close()
