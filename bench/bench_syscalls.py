"""System calls and the server's user/kernel CPU per round trip and per MiB, each echo server
in a process of its own: ``python bench/bench_syscalls.py [--round-trips 20000] [--mib 256]``.

Counts, not times (strace slows every call): each server kind of ``_echo_servers.py`` runs
in a process of its own under ``strace -f -c``; the client, in this process, makes
``--round-trips`` one-client round trips of 32 bytes (TCP_NODELAY) or streams ``--mib`` MiB
through it and reads the echo back. The same run with no traffic (connect, close) is
subtracted, so the start-up's calls (imports, the listener) drop out. Then the same traffic
again without strace, three rounds, reading the server process's user and system CPU time
from ``/proc/PID/stat`` before and after: how much of a round trip is the kernel's (the same
for every server) and how much the server's own code. Last, 15 blocks of 2000 round trips
over one connection, each block timed: where the scheduler puts client and server (one CPU
or two) shows as a jump in the rate. ``--cpu N`` pins client and servers to CPU N: the
one-CPU regime on purpose. Anchors: stdlib
``socketserver.ThreadingTCPServer`` and ``asyncio.start_server``, in the same run.

Needs ``strace`` (``apt-get install strace``). Results go to stdout and
``bench/results/syscalls.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ["netthreads-selector", "netthreads-thread", "stdlib-threading", "asyncio"]
MSG = b"m" * 32


def _round_trips(port: int, count: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            sock.sendall(MSG)
            got = 0
            while got < len(MSG):
                got += len(sock.recv(len(MSG) - got))


def _bulk(port: int, mib: int) -> None:
    total = mib * 1024 * 1024
    chunk = b"b" * 262144
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def send() -> None:
            left = total
            while left > 0:
                sock.sendall(chunk[: min(left, len(chunk))])
                left -= len(chunk)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        buf = bytearray(262144)
        received = 0
        while received < total and (n := sock.recv_into(buf)):
            received += n
        sender.join(60)
        if received != total:
            raise RuntimeError(f"echoed {received} of {total} bytes")


def _counted(strace: str, kind: str, drive: object, amount: int) -> dict[str, int]:
    """Per system call name, the calls the server process (all its threads) made."""
    with tempfile.TemporaryDirectory(prefix="bench-syscalls-") as tmp:
        out = os.path.join(tmp, "strace.txt")
        proc = subprocess.Popen(
            [strace, "-f", "-c", "-o", out, sys.executable, str(HERE / "_echo_servers.py"), kind],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=str(HERE.parent)),
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            port = int(proc.stdout.readline())
            drive(port, amount)  # type: ignore[operator]
        finally:
            # The server's stderr is read only now: asyncio's may hold the cancelled
            # handler's traceback of the connection still open at shutdown (not an error).
            _, err = proc.communicate(timeout=120)  # closes stdin: the server stops
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} under strace exited {proc.returncode}:\n{err[-3000:]}")
        counts: dict[str, int] = {}
        with open(out) as f:
            for line in f:
                parts = line.split()
                # % time, seconds, usecs/call, calls, [errors], syscall
                if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                    counts[parts[-1]] = int(parts[3])
        return counts


def _blocks(port: int, blocks: int) -> list[float]:
    """Round trips/s over one connection, block by block (2000 round trips a block)."""
    rates: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(blocks):
            start = time.perf_counter()
            for _ in range(2000):
                sock.sendall(MSG)
                got = 0
                while got < len(MSG):
                    got += len(sock.recv(len(MSG) - got))
            rates.append(round(2000 / (time.perf_counter() - start)))
    return rates


def _cpu(kind: str, drive: object, amount: int) -> dict[str, float]:
    """The server's user and system CPU microseconds per unit of ``drive``, and units/s."""
    tick = os.sysconf("SC_CLK_TCK")

    def times(pid: int) -> tuple[float, float]:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime

    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_echo_servers.py"), kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(HERE.parent)),
    )
    assert proc.stdout is not None
    try:
        port = int(proc.stdout.readline())
        user0, sys0 = times(proc.pid)
        start = time.perf_counter()
        drive(port, amount)  # type: ignore[operator]
        elapsed = time.perf_counter() - start
        user1, sys1 = times(proc.pid)
    finally:
        _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} exited {proc.returncode}:\n{err[-3000:]}")
    return {
        "user_us": round((user1 - user0) / amount * 1e6, 1),
        "sys_us": round((sys1 - sys0) / amount * 1e6, 1),
        "per_second": round(amount / elapsed, 1),
    }


def _per_unit(strace: str, kind: str, drive: object, amount: int) -> dict[str, float]:
    base = _counted(strace, kind, drive, 0)
    loaded = _counted(strace, kind, drive, amount)
    per = {
        name: (loaded.get(name, 0) - base.get(name, 0)) / amount
        for name in set(base) | set(loaded)
    }
    # Below 0.01 a call per unit is start-up noise (an extra futex, an mmap), not the path.
    return {k: round(v, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument(
        "--echo-read-size", type=int, default=None,
        help="an experiment: the kit's echo reads this many bytes until a stream flows "
        "(default: its own, 128 KiB - 64, under glibc's mmap threshold)",
    )
    parser.add_argument(
        "--cpu", type=int, default=None,
        help="pin the client (this process) and every server to this one CPU: the regime "
        "where a round trip is a hand-over on one CPU, not a cross-CPU wake-up",
    )
    parser.add_argument("--quick", action="store_true", help="2000 round trips, 32 MiB")
    args = parser.parse_args()
    if args.quick:
        args.round_trips, args.mib = 2000, 32
    for name in ("round_trips", "mib"):
        if not 1 <= getattr(args, name) <= 10**7:
            parser.error(f"--{name.replace('_', '-')} must be from 1 to 10000000")
    if args.cpu is not None:
        allowed = sorted(os.sched_getaffinity(0))
        if args.cpu not in allowed:
            parser.error(f"--cpu must be one of this process's CPUs {allowed}, got {args.cpu}")
        os.sched_setaffinity(0, {args.cpu})  # the servers, started from here, inherit it
    if args.echo_read_size is not None:
        if not 1 <= args.echo_read_size <= 1 << 24:
            parser.error("--echo-read-size must be from 1 to 16777216")
        os.environ["BENCH_ECHO_READ_SIZE"] = str(args.echo_read_size)
    strace = shutil.which("strace")
    results: dict[str, dict[str, dict[str, float]]] = {}
    if strace is None:
        print("bench_syscalls: strace is not installed (apt-get install strace): the system "
              "calls are not counted, the CPU and the per-block rates are measured")
    else:
        for kind in KINDS:
            results[kind] = {
                "per round trip": _per_unit(strace, kind, _round_trips, args.round_trips),
                "per MiB": _per_unit(strace, kind, _bulk, args.mib),
            }
    drives = {"per round trip": (_round_trips, args.round_trips), "per MiB": (_bulk, args.mib)}
    cpu: dict[str, dict[str, list[dict[str, float]]]] = {k: {} for k in KINDS}
    for _ in range(3):
        for kind in KINDS:
            for shape, (drive, amount) in drives.items():
                cpu[kind].setdefault(shape, []).append(_cpu(kind, drive, amount))
    # Where the scheduler puts the two processes decides the rate: on one CPU a round trip
    # is a direct hand-over, on two it waits for a cross-CPU wake-up each way.
    blocks: dict[str, list[list[float]]] = {k: [] for k in KINDS}
    for _ in range(2):
        for kind in KINDS:
            _cpu(kind, lambda port, n, out=blocks[kind]: out.append(_blocks(port, n)), 15)
    for shape in ("per round trip", "per MiB") if results else ():
        print(f"\nServer system calls {shape} "
              f"({args.round_trips} one-client round trips / {args.mib} MiB echoed):")
        for kind in KINDS:
            calls = results[kind][shape]
            total = sum(calls.values())
            detail = ", ".join(f"{name} {n:g}" for name, n in calls.items())
            print(f"  {kind:22} {total:7.2f}  ({detail})")
    for shape in ("per round trip", "per MiB"):
        unit = "round trips/s" if shape == "per round trip" else "MiB/s"
        print(f"\nServer CPU {shape}, no strace (three rounds): user us, system us, {unit}")
        for kind in KINDS:
            rounds = cpu[kind][shape]
            cells = "  ".join(
                f"{r['user_us']:6.1f} {r['sys_us']:6.1f} {r['per_second']:9.0f}" for r in rounds
            )
            print(f"  {kind:22} {cells}")
    print("\nOne connection, 15 blocks of 2000 round trips, two runs: round trips/s of the first")
    print("three blocks, then the median of the other twelve")
    for kind in KINDS:
        cells = "   ".join(
            f"{' '.join(f'{r:6.0f}' for r in run[:3])} | {statistics.median(run[3:]):6.0f}"
            for run in blocks[kind]
        )
        print(f"  {kind:22} {cells}")
    out = HERE / "results" / "syscalls.json"
    out.parent.mkdir(exist_ok=True)
    figures = {"args": vars(args), "syscalls": results, "cpu": cpu, "blocks": blocks}
    out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
