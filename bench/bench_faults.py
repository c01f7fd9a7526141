"""Fault proxy benchmark: ratios measured side by side in one run.

    python bench/bench_faults.py            # about a minute; prints a table (and --json)

Three processes: the echo server (the kit's selector echo) in one, the FaultProxy in this
one, and the load generator in a third, so the client's work is not charged to the proxy.
Each figure is the median of a few rounds, direct and proxied rounds alternating, so that
noise on a shared machine hits both sides alike.

- bulk throughput: one connection, a sender thread and a receiver, ``--bulk-mb`` each way;
- round trips: one client, 64-byte request, wait for the echo, repeat for ``--seconds``;
- Bandwidth(r): the downstream rate a client measures, for r from 10 kB/s to 50 MB/s;
- Latency(d): the extra round-trip time over a no-fault proxy, for d from 10 to 250 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- child processes ------------------------------------------------------------------------


def serve_echo() -> None:
    from pytest_netthreads import ThreadedServer, handlers

    with ThreadedServer(handlers.echo, concurrency="selector") as server:
        print(server.port, flush=True)
        sys.stdin.read()  # until the parent closes our stdin


def _recv_exactly(sock: socket.socket, n: int, buf: bytearray) -> None:
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[: min(len(buf), n - got)])
        if not k:
            raise EOFError(f"closed after {got} of {n} bytes")
        got += k


def client(mode: str, port: int, arg: float) -> dict[str, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mode == "bulk":
            total = int(arg * 1e6)
            chunk = b"b" * 65536

            def send() -> None:
                left = total
                while left > 0:
                    left -= sock.send(chunk[: min(len(chunk), left)])

            buf = bytearray(262144)
            started = time.perf_counter()
            sender = threading.Thread(target=send)
            sender.start()
            _recv_exactly(sock, total, buf)
            elapsed = time.perf_counter() - started
            sender.join()
            return {"mb_per_s": total / elapsed / 1e6}
        if mode == "rtt":
            payload = b"r" * 64
            buf = bytearray(64)
            count = 0
            started = time.perf_counter()
            deadline = started + arg
            while True:
                sock.sendall(payload)
                _recv_exactly(sock, 64, buf)
                count += 1
                if count % 64 == 0 and time.perf_counter() >= deadline:
                    break
            return {"per_s": count / (time.perf_counter() - started)}
        if mode == "rate":
            # Send `arg` bytes (the upstream is not limited), time the paced echo.
            total = int(arg)
            buf = bytearray(262144)
            started = time.perf_counter()
            sender = threading.Thread(target=sock.sendall, args=(b"w" * total,))
            sender.start()
            _recv_exactly(sock, total, buf)
            elapsed = time.perf_counter() - started
            sender.join()
            return {"bytes_per_s": total / elapsed}
        if mode == "ping":
            samples = []
            buf = bytearray(16)
            for _ in range(int(arg)):
                started = time.perf_counter()
                sock.sendall(b"p" * 16)
                _recv_exactly(sock, 16, buf)
                samples.append(time.perf_counter() - started)
            return {"median_s": statistics.median(samples)}
    raise ValueError(f"unknown mode {mode!r}")


def run_client(mode: str, port: int, arg: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "client", mode, str(port), str(arg)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


# -- the benchmark ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk-mb", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()

    from pytest_netthreads.faults import Bandwidth, FaultProxy, Latency

    echo = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "echo"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    results: dict[str, Any] = {}
    try:
        assert echo.stdout is not None and echo.stdin is not None
        echo_port = int(echo.stdout.readline())
        target = ("127.0.0.1", echo_port)
        with FaultProxy(target, seed=1) as proxy:
            direct_bulk, proxy_bulk, direct_rtt, proxy_rtt = [], [], [], []
            for _ in range(args.rounds):
                direct_bulk.append(run_client("bulk", echo_port, args.bulk_mb)["mb_per_s"])
                proxy_bulk.append(run_client("bulk", proxy.port, args.bulk_mb)["mb_per_s"])
                direct_rtt.append(run_client("rtt", echo_port, args.seconds)["per_s"])
                proxy_rtt.append(run_client("rtt", proxy.port, args.seconds)["per_s"])
            results["bulk_mb_per_s"] = {
                "direct": statistics.median(direct_bulk),
                "proxy": statistics.median(proxy_bulk),
            }
            results["round_trips_per_s"] = {
                "direct": statistics.median(direct_rtt),
                "proxy": statistics.median(proxy_rtt),
            }
            bandwidth = []
            for rate in (10e3, 100e3, 1e6, 10e6, 50e6):
                size = max(20_000, int(rate * 1.0))  # about a second of data at that rate
                with proxy.add(Bandwidth(rate)):
                    measured = statistics.median(
                        run_client("rate", proxy.port, size)["bytes_per_s"]
                        for _ in range(args.rounds)
                    )
                bandwidth.append({"set": rate, "measured": measured, "ratio": measured / rate})
            results["bandwidth"] = bandwidth
            latency = []
            for delay in (0.01, 0.05, 0.1, 0.25):
                extra = []
                for _ in range(args.rounds):
                    base = run_client("ping", proxy.port, 20)["median_s"]
                    with proxy.add(Latency(delay)):
                        slow = run_client("ping", proxy.port, 20)["median_s"]
                    extra.append(slow - base)
                measured = statistics.median(extra)
                latency.append({"set": delay, "measured": measured, "error": measured - delay})
            results["latency"] = latency
    finally:
        if echo.stdin is not None:
            echo.stdin.close()
        try:
            echo.wait(10)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait(10)
        if echo.stdout is not None:
            echo.stdout.close()

    bulk, rtt = results["bulk_mb_per_s"], results["round_trips_per_s"]
    print(f"{'measure':<34}{'direct':>12}{'proxy':>12}{'ratio':>8}")
    print(f"{'bulk throughput (MB/s)':<34}{bulk['direct']:>12.1f}{bulk['proxy']:>12.1f}"
          f"{bulk['proxy'] / bulk['direct']:>8.2f}")
    print(f"{'one-client round trips (/s)':<34}{rtt['direct']:>12.0f}{rtt['proxy']:>12.0f}"
          f"{rtt['proxy'] / rtt['direct']:>8.2f}")
    print()
    print(f"{'Bandwidth set (B/s)':<34}{'measured':>12}{'ratio':>8}")
    for row in results["bandwidth"]:
        print(f"{row['set']:<34,.0f}{row['measured']:>12,.0f}{row['ratio']:>8.3f}")
    print()
    print(f"{'Latency set (ms)':<34}{'added (ms)':>12}{'error (ms)':>12}")
    for row in results["latency"]:
        print(f"{row['set'] * 1e3:<34.0f}{row['measured'] * 1e3:>12.1f}{row['error'] * 1e3:>12.1f}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "echo":
        serve_echo()
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        print(json.dumps(client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
    else:
        main()
