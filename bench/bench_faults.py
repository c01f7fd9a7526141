"""Fault proxy benchmark: ratios measured side by side in one run.

    python bench/bench_faults.py --rounds 5   # a few minutes; prints a table (and --json)

The load generator always runs in a process of its own, so the client's work is not charged
to the proxy; the proxy runs in this process. The echo server (the kit's selector echo, what
the ``echo_server`` fixture starts) is measured in two places, each against a direct
connection to the same server:

- in a process of its own, as a real server (Redis, say) would be;
- in this process, beside the proxy, as ``fault_proxy(echo_server)`` runs in a test (the
  proxy and the server then share the kit's event loop thread).

Each figure is the median of ``--rounds`` rounds, direct and proxied runs alternating, so
that noise on a shared machine hits both sides alike; each ratio is the median of the
per-round ratios.

- bulk throughput: one connection, a sender thread and a receiver, ``--bulk-mb`` each way;
  the round's ratio is the proxied run's over the direct run's just before it;
- round trips: one client, 64-byte request, wait for the echo, repeat; the client holds a
  direct and a proxied connection and uses them in turn for slices of 100 round trips, for
  ``2 * --seconds`` in all; the round's ratio is the median of the per-slice ratios;
- Bandwidth(r): the downstream rate a client measures, for r from 10 kB/s to 50 MB/s;
- Latency(d): the extra round-trip time over a no-fault proxy, for d from 10 to 250 ms;
- message trigger, no match: one client, a plain proxy and a proxy whose fault waits for a
  message that never comes (``ResetPeer(on=Message(Lines(), match=b"never"))``, both
  directions), in front of the same in-process echo, 64-byte lines; the ratio is the
  triggered proxy's round trips over the plain one's (goal: at least 0.9).
  ``--messages-only`` runs this row alone.

Results go to stdout and ``bench/results/faults.json``. ``--quick`` runs shorter.
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
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HERE = Path(__file__).resolve().parent


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


_SLICE = 100  # round trips in one slice of rtt_pair()


def rtt_pair(
    direct_port: int, proxy_port: int, seconds: float, payload: bytes = b"r" * 64
) -> dict[str, float]:
    """One client, a direct and a proxied connection, used in turn for slices of round trips.

    Both paths get the same client process, message and moment: a burst of other work on a
    shared machine falls on one slice of each, and the median of the per-slice ratios leaves
    it out. The order within a slice pair alternates.
    """
    socks = [
        socket.create_connection(("127.0.0.1", port), timeout=60)
        for port in (direct_port, proxy_port)
    ]
    buf = bytearray(len(payload))

    def burst(sock: socket.socket, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            sock.sendall(payload)
            _recv_exactly(sock, len(payload), buf)
        return time.perf_counter() - started

    try:
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            burst(sock, 50)  # warm up
        spent = [0.0, 0.0]
        ratios = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(ratios) < 10:
            took = [0.0, 0.0]
            for i in (0, 1) if len(ratios) % 2 == 0 else (1, 0):
                took[i] = burst(socks[i], _SLICE)
            spent[0] += took[0]
            spent[1] += took[1]
            ratios.append(took[0] / took[1])  # proxied rate over direct rate
    finally:
        for sock in socks:
            sock.close()
    n = len(ratios) * _SLICE
    return {
        "direct_per_s": n / spent[0],
        "proxy_per_s": n / spent[1],
        "ratio": statistics.median(ratios),
        "slices": len(ratios),
    }


def run_client(mode: str, port: int | str, arg: float) -> dict[str, float]:
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


def direct_and_proxied(
    direct_port: int, proxy_port: int, rounds: int, bulk_mb: float, seconds: float
) -> dict[str, Any]:
    """Bulk and round-trip figures, direct and proxied runs alternating."""
    runs: dict[str, list[float]] = {k: [] for k in ("db", "pb", "dr", "pr", "rr")}
    for _ in range(rounds):
        runs["db"].append(run_client("bulk", direct_port, bulk_mb)["mb_per_s"])
        runs["pb"].append(run_client("bulk", proxy_port, bulk_mb)["mb_per_s"])
        pair = run_client("rtt-pair", f"{direct_port},{proxy_port}", 2 * seconds)
        runs["dr"].append(pair["direct_per_s"])
        runs["pr"].append(pair["proxy_per_s"])
        runs["rr"].append(pair["ratio"])

    def row(direct: list[float], proxy: list[float], ratios: list[float]) -> dict[str, Any]:
        return {
            "direct": statistics.median(direct),
            "proxy": statistics.median(proxy),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
        }

    bulk_ratios = [p / d for d, p in zip(runs["db"], runs["pb"])]
    return {
        "bulk_mb_per_s": row(runs["db"], runs["pb"], bulk_ratios),
        "round_trips_per_s": row(runs["dr"], runs["pr"], runs["rr"]),
    }


def message_trigger_row(rounds: int, seconds: float) -> dict[str, Any]:
    """Round trips through a proxy with a message trigger that never fires, over a plain one."""
    from pytest_netthreads import ThreadedServer, handlers
    from pytest_netthreads.faults import FaultProxy, Lines, Message, ResetPeer

    never = ResetPeer(direction="both", on=Message(Lines(), match=b"never"))
    with ThreadedServer(handlers.echo, concurrency="selector") as server, FaultProxy(
        server, seed=1
    ) as plain, FaultProxy(server, never, seed=1) as triggered:
        plain_rates, triggered_rates, ratios = [], [], []
        for _ in range(rounds):
            pair = run_client("rtt-pair-lines", f"{plain.port},{triggered.port}", 2 * seconds)
            plain_rates.append(pair["direct_per_s"])
            triggered_rates.append(pair["proxy_per_s"])
            ratios.append(pair["ratio"])
        assert not triggered.log, triggered.format_log()  # it never fired
    return {
        "plain": statistics.median(plain_rates),
        "triggered": statistics.median(triggered_rates),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }


def print_message_row(row: dict[str, Any]) -> None:
    title = "message trigger, no match"
    print(f"{title:<34}{'plain':>12}{'triggered':>12}{'ratio':>8}   per round")
    each = " ".join(f"{r:.2f}" for r in row["ratios"])
    print(f"{'  one-client round trips (/s)':<34}{row['plain']:>12.0f}{row['triggered']:>12.0f}"
          f"{row['ratio']:>8.2f}   {each}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk-mb", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="shorter runs, one round")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--messages-only", action="store_true",
                        help="only the message-trigger row (no results file)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.bulk_mb, args.seconds = 1, 50.0, 0.5
    if args.messages_only:
        print_message_row(message_trigger_row(args.rounds, args.seconds))
        return

    from pytest_netthreads import ThreadedServer, handlers
    from pytest_netthreads.faults import Bandwidth, FaultProxy, Latency

    echo = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "echo"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    results: dict[str, Any] = {"rounds": args.rounds}
    try:
        assert echo.stdout is not None and echo.stdin is not None
        echo_port = int(echo.stdout.readline())
        target = ("127.0.0.1", echo_port)
        with FaultProxy(target, seed=1) as proxy:
            results["target_in_own_process"] = direct_and_proxied(
                echo_port, proxy.port, args.rounds, args.bulk_mb, args.seconds
            )
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

    with ThreadedServer(handlers.echo, concurrency="selector") as server, FaultProxy(
        server, seed=1
    ) as proxy:
        results["target_in_proxy_process"] = direct_and_proxied(
            server.port, proxy.port, args.rounds, args.bulk_mb, args.seconds
        )
    results["message_trigger_no_match"] = message_trigger_row(args.rounds, args.seconds)

    print(f"{'measure':<34}{'direct':>12}{'proxy':>12}{'ratio':>8}   per round")
    for key, title in (
        ("target_in_own_process", "echo server in its own process"),
        ("target_in_proxy_process", "echo server in the proxy's process"),
    ):
        print(title)
        for name, label, fmt in (
            ("bulk_mb_per_s", "  bulk throughput (MB/s)", ".1f"),
            ("round_trips_per_s", "  one-client round trips (/s)", ".0f"),
        ):
            row = results[key][name]
            each = " ".join(f"{r:.2f}" for r in row["ratios"])
            print(f"{label:<34}{row['direct']:>12{fmt}}{row['proxy']:>12{fmt}}"
                  f"{row['ratio']:>8.2f}   {each}")
    print()
    print_message_row(results["message_trigger_no_match"])
    print()
    print(f"{'Bandwidth set (B/s)':<34}{'measured':>12}{'ratio':>8}")
    for row in results["bandwidth"]:
        print(f"{row['set']:<34,.0f}{row['measured']:>12,.0f}{row['ratio']:>8.3f}")
    print()
    print(f"{'Latency set (ms)':<34}{'added (ms)':>12}{'error (ms)':>12}")
    for row in results["latency"]:
        print(f"{row['set'] * 1e3:<34.0f}{row['measured'] * 1e3:>12.1f}{row['error'] * 1e3:>12.1f}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "faults.json").write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "echo":
        serve_echo()
    elif len(sys.argv) > 1 and sys.argv[1] == "client" and sys.argv[2] == "rtt-pair":
        direct, proxied = (int(p) for p in sys.argv[3].split(","))
        print(json.dumps(rtt_pair(direct, proxied, float(sys.argv[4]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "client" and sys.argv[2] == "rtt-pair-lines":
        plain, triggered = (int(p) for p in sys.argv[3].split(","))
        print(json.dumps(rtt_pair(plain, triggered, float(sys.argv[4]), b"r" * 63 + b"\n")))
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        print(json.dumps(client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
    else:
        main()
