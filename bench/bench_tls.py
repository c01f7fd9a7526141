"""TLS benchmarks, all measured side by side in one run.

    python bench/bench_tls.py [--tests 1000] [--reps 3] [--handshakes 300]

1. Per-test fixture cost: generated suites of trivial tests, each suite run in a fresh
   ``python -m pytest`` subprocess, for: no fixture; a fresh ``echo_server`` (plain TCP)
   and a fresh ``tls_echo_server`` per test;
   pytest-httpserver's (session-reused) ``httpserver``; and pytest-localserver's
   ``httpsserver`` (a fresh one per test; 20 tests, it is slow). A conftest times the
   session from its start to the end of its teardown (interpreter start-up and plugin
   imports excluded); the per-test cost is the difference with the no-fixture suite of the
   same size, divided by the number of tests. One-off session set-up (importing trustme,
   making the CA; starting pytest-httpserver's server) is included, spread over the tests.
2. TLS connect + handshake + one 64-byte round trip against a ``ThreadedServer`` with the
   session CA's context, next to the same over plain TCP.
3. Building a server ``SSLContext`` from the CA, cached and uncached.

Runs are interleaved and the median of ``--reps`` is taken: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from pytest_netthreads import ThreadedServer, handlers
from pytest_netthreads.tls import CertificateAuthority

SUITES: dict[str, str] = {
    "trivial": "def test_{i}():\n    pass\n",
    "echo_server (plain TCP)": "def test_{i}(echo_server):\n    pass\n",
    "tls_echo_server": "def test_{i}(tls_echo_server):\n    pass\n",
    "httpserver": "def test_{i}(httpserver):\n    pass\n",
    "localserver httpsserver": "def test_{i}(httpsserver):\n    pass\n",
}


CONFTEST = """
import os, statistics, time
import pytest

_start = []
_per_test = {}

def pytest_sessionstart(session):
    _start.extend((time.perf_counter(), time.process_time()))

def pytest_runtest_logreport(report):
    _per_test[report.nodeid] = _per_test.get(report.nodeid, 0.0) + report.duration

@pytest.hookimpl(trylast=True)  # after the session-scoped fixtures were torn down
def pytest_sessionfinish(session):
    durations = list(_per_test.values())
    with open(os.environ["BENCH_TLS_OUT"], "w") as f:
        f.write(
            f"{time.perf_counter() - _start[0]!r} {time.process_time() - _start[1]!r} "
            f"{statistics.median(durations)!r}"
        )
"""


def write_suite(directory: str, name: str, count: int) -> str:
    path = os.path.join(directory, f"test_{re.sub(r'[^a-z0-9]+', '_', name)}_{count}.py")
    with open(path, "w") as f:
        f.write("".join(SUITES[name].format(i=i) for i in range(count)))
    return path


def run_suite(directory: str, path: str, expected: int) -> tuple[float, float, float, float]:
    """Wall and CPU seconds (all threads) from session start to the end of session teardown
    (interpreter start-up excluded); the median test's set-up + call + teardown seconds; the
    whole process's wall seconds (interpreter start-up and plugin imports included)."""
    out = os.path.join(directory, "elapsed.txt")
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "pytest.ini", path],
        cwd=directory,
        env={**os.environ, "BENCH_TLS_OUT": out},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    process = time.perf_counter() - started
    if proc.returncode != 0 or f"{expected} passed" not in proc.stdout:
        raise RuntimeError(f"suite {path} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(out) as f:
        wall, cpu, median = f.read().split()
    return float(wall), float(cpu), float(median), process


Row = tuple[str, int, float, float, float, float]


def fixture_costs(tests: int, reps: int) -> list[Row]:
    """Per test, over the trivial suite of the same size, in ms: (suite, tests, session wall,
    session CPU, median test, process wall)."""
    sizes = {name: tests for name in SUITES}
    sizes["localserver httpsserver"] = 20
    times: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as directory:
        with open(os.path.join(directory, "pytest.ini"), "w") as f:
            f.write("[pytest]\n")
        with open(os.path.join(directory, "conftest.py"), "w") as f:
            f.write(CONFTEST)
        runs = {(name, sizes[name]) for name in SUITES} | {("trivial", 20)}
        paths = {(name, n): write_suite(directory, name, n) for name, n in sorted(runs)}
        for _ in range(reps):
            for (name, n), path in paths.items():
                times.setdefault((name, n), []).append(run_suite(directory, path, n))
    med = {
        key: tuple(statistics.median(v[i] for v in values) for i in range(4))
        for key, values in times.items()
    }
    base = med[("trivial", tests)]
    rows: list[Row] = [
        (
            "trivial",
            tests,
            base[0] / tests * 1e3,
            base[1] / tests * 1e3,
            base[2] * 1e3,
            base[3] / tests * 1e3,
        )
    ]
    for name in SUITES:
        if name != "trivial":
            n = sizes[name]
            got, ref = med[(name, n)], med[("trivial", n)]
            rows.append(
                (
                    name,
                    n,
                    (got[0] - ref[0]) / n * 1e3,
                    (got[1] - ref[1]) / n * 1e3,
                    (got[2] - ref[2]) * 1e3,
                    (got[3] - ref[3]) / n * 1e3,
                )
            )
    return rows


def time_per_call(func: Callable[[], object], count: int) -> tuple[float, float]:
    """(median, mean) milliseconds per call."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3, statistics.fmean(samples) * 1e3


def round_trips(ca: CertificateAuthority, count: int) -> list[tuple[str, float, float]]:
    payload = b"x" * 64
    client_context = ca.client_context()
    rows = []
    with ThreadedServer(handlers.echo, ssl_context=ca.server_context()) as tls_srv:

        def tls_round_trip() -> None:
            raw = socket.create_connection((tls_srv.host, tls_srv.port), timeout=10)
            with client_context.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    got += conn.recv(len(payload))

        time_per_call(tls_round_trip, 20)  # warm up
        rows.append(("TLS connect + handshake + round trip", *time_per_call(tls_round_trip, count)))
    with ThreadedServer(handlers.echo) as tcp_srv:

        def tcp_round_trip() -> None:
            with socket.create_connection((tcp_srv.host, tcp_srv.port), timeout=10) as conn:
                conn.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    got += conn.recv(len(payload))

        time_per_call(tcp_round_trip, 20)
        rows.append(("plain TCP connect + round trip", *time_per_call(tcp_round_trip, count)))
    return rows


def context_builds(count: int) -> list[tuple[str, float, float]]:
    with CertificateAuthority() as ca:
        ca.server_context()  # issue the certificate once
        cached = time_per_call(ca.server_context, count)

        def uncached() -> None:
            ca._server_contexts.clear()  # what a cache miss costs: load the key and chain
            ca.server_context()

        fresh = time_per_call(uncached, count)
        new_ca = time_per_call(lambda: CertificateAuthority().close(), max(10, count // 10))
    return [
        ("server SSLContext, cached (per test)", *cached),
        ("server SSLContext, built (once per session)", *fresh),
        ("new CertificateAuthority (root + intermediate)", *new_ca),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=1000, help="tests in the large suites")
    parser.add_argument("--reps", type=int, default=3, help="runs of each suite (median)")
    parser.add_argument("--handshakes", type=int, default=300, help="TLS round trips timed")
    parser.add_argument("--quick", action="store_true", help="200 tests, 1 run, 50 handshakes")
    args = parser.parse_args()
    if args.quick:
        args.tests, args.reps, args.handshakes = 200, 1, 50
    if args.tests < 10 or args.reps < 1 or args.handshakes < 1:
        parser.error("--tests must be >= 10, --reps and --handshakes >= 1")

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; medians of {args.reps} runs")
    print("\nPer-test cost of each fixture over the trivial suite of the same size, ms:")
    print("  session: session time (one-off set-up such as importing trustme and making the")
    print("           CA included) / tests;  median test: the median test's set-up + call +")
    print("           teardown (one-offs excluded);  process: the whole process's wall time")
    print("           (interpreter start-up and every plugin's imports included) / tests")
    print(f"{'suite':<36}{'tests':>7}{'session':>9}{'CPU':>8}{'median':>8}{'process':>9}")
    costs = fixture_costs(args.tests, args.reps)
    for name, n, wall_ms, cpu_ms, median_ms, process_ms in costs:
        label = "trivial tests (absolute, no fixture)" if name == "trivial" else name
        print(f"{label:<36}{n:>7}{wall_ms:>9.3f}{cpu_ms:>8.3f}{median_ms:>8.3f}{process_ms:>9.3f}")

    with CertificateAuthority() as ca:
        rows = round_trips(ca, args.handshakes)
    rows += context_builds(args.handshakes)
    print(f"\n{'operation':<48}{'median ms':>10}{'mean ms':>10}")
    for label, med, mean in rows:
        print(f"{label:<48}{med:>10.3f}{mean:>10.3f}")
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "tls.json"), "w") as f:
        json.dump({"fixtures_ms": costs, "operations_ms": rows}, f, indent=2)


if __name__ == "__main__":
    main()
