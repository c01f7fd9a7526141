"""Server benchmarks, anchors side by side in one run: ``python bench/bench_servers.py``.

1. Per-test cost of a server fixture: the time of a suite of N trivial tests that each take
   the fixture, minus the time of the same suite without it, divided by N. Anchors:
   pytest-httpserver's ``httpserver`` (one session server, cleared per test) and
   pytest-localserver's ``httpserver`` (a fresh werkzeug server per test; measured on fewer
   tests because each costs about half a second).
2. Echo throughput with the load generator in a separate process (``_loadgen.py``), every
   server in a process of its own: bulk bytes/s, round trips/s with 1 and 32 clients, and
   1000 connections open at once. Anchors: stdlib ``socketserver.ThreadingTCPServer`` and
   ``asyncio.start_server``.

Results go to stdout and ``bench/results/servers.json``. ``--quick`` runs shorter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def _suite_seconds(fixture: str | None, n: int, extra: list[str], repeats: int) -> float:
    args = f"{fixture}, i" if fixture else "i"
    body = (
        "import pytest\n\n"
        f"@pytest.mark.parametrize('i', range({n}))\n"
        f"def test_x({args}):\n    pass\n"
    )
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test_suite.py"
        path.write_text(body)
        for _ in range(repeats):
            start = time.perf_counter()
            proc = subprocess.run(
                [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, str(path)],
                cwd=tmp, capture_output=True, text=True, timeout=1800,
            )
            times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(f"suite with {fixture} failed:\n{proc.stdout[-3000:]}")
    return min(times)


_OURS = ["-p", "no:localserver", "-p", "no:pytest_httpserver", "-p", "no:threadleak"]
FIXTURES = [
    # (label, fixture, extra pytest args, number of tests)
    ("netthreads echo_server (fresh per test)", "echo_server", _OURS, 1000),
    ("netthreads tls_echo_server (fresh per test)", "tls_echo_server", _OURS, 1000),
    ("pytest-httpserver httpserver (reused)", "httpserver",
     ["-p", "no:localserver", "-p", "no:threadleak"], 1000),
    ("pytest-localserver httpserver (fresh)", "httpserver",
     ["-p", "no:pytest_httpserver", "-p", "no:threadleak"], 20),
]


def fixture_costs(repeats: int, scale: float) -> list[dict[str, object]]:
    rows = []
    for label, fixture, extra, n in FIXTURES:
        n = max(10, int(n * scale))
        trivial = _suite_seconds(None, n, extra, repeats)
        with_fixture = _suite_seconds(fixture, n, extra, repeats)
        per_test_ms = (with_fixture - trivial) / n * 1000
        rows.append({"fixture": label, "tests": n, "suite_s": round(with_fixture, 3),
                     "trivial_s": round(trivial, 3), "per_test_ms": round(per_test_ms, 4)})
        print(f"  {label:47s} {per_test_ms:9.3f} ms/test  ({n} tests)", flush=True)
    return rows


SERVERS = ["netthreads-selector", "netthreads-thread", "stdlib-threading", "asyncio"]
SHAPES = [("bulk", "bytes_per_second"), ("rtt1", "round_trips_per_second"),
          ("rtt32", "round_trips_per_second"), ("conn1000", "served")]


def _with_server(kind: str, shape: str, seconds: float) -> dict[str, float]:
    """The load generator's figures, plus ``server_cpu_s``: the server process's CPU seconds
    (all its threads) while it served them."""
    server = subprocess.Popen(
        [PY, str(HERE / "_echo_servers.py"), kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        port = int(server.stdout.readline())
        out = subprocess.run(
            [PY, str(HERE / "_loadgen.py"), shape, str(port), str(seconds)],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout
        result: dict[str, float] = json.loads(out)
        server.stdin.close()
        result["server_cpu_s"] = float(server.stdout.readline())
        return result
    finally:
        if server.stdin is not None and not server.stdin.closed:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()  # our own child, by its handle
            server.wait(10)


def throughput(
    seconds: float, repeats: int, shapes: list[str] | None = None
) -> list[dict[str, object]]:
    """Each shape against each server, the servers interleaved round by round; the median of
    ``repeats`` rounds, the ratio of the kit's selector echo (what ``echo_server`` is) to the
    best of the stdlib and asyncio servers of each round, and for round trips the server's CPU
    time per round trip (microseconds) or per GB echoed (milliseconds)."""
    rows = []
    for shape, key in SHAPES:
        if shapes and shape not in shapes:
            continue
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in SERVERS}
        ratios = []
        for _ in range(repeats):
            got = {kind: _with_server(kind, shape, seconds) for kind in SERVERS}
            for kind in SERVERS:
                runs[kind].append(got[kind])
            if key != "served":
                best = max(got["stdlib-threading"][key], got["asyncio"][key])
                ratios.append(got["netthreads-selector"][key] / best)
        for kind in SERVERS:
            value = statistics.median(r[key] for r in runs[kind])
            row: dict[str, object] = {"shape": shape, "server": kind, key: value}
            unit = "GB/s" if shape == "bulk" else ("round trips/s" if key != "served" else "served")
            shown = value / 1e9 if shape == "bulk" else value
            extra = ""
            if key == "round_trips_per_second":
                cpu_us = statistics.median(
                    r["server_cpu_s"] / r["round_trips"] * 1e6 for r in runs[kind]
                )
                row["server_cpu_us_per_round_trip"] = cpu_us
                extra = f"  server CPU {cpu_us:6.1f} us/round trip"
            elif shape == "bulk":
                cpu_ms = statistics.median(
                    r["server_cpu_s"] / r["bytes"] * 1e12 for r in runs[kind]
                )
                row["server_cpu_ms_per_gb"] = cpu_ms
                extra = f"  server CPU {cpu_ms:6.0f} ms/GB"
            rows.append(row)
            print(f"  {shape:9s} {kind:22s} {shown:12.3f} {unit}{extra}", flush=True)
        if ratios:
            rows.append({"shape": shape, "selector_vs_best_anchor": ratios})
            shown_ratios = " ".join(f"{r:.2f}" for r in ratios)
            print(f"  {shape:9s} selector / best of stdlib, asyncio: {shown_ratios}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer repeats")
    parser.add_argument(
        "--echo-only", action="store_true", help="only the echo throughput (no fixture suites)"
    )
    parser.add_argument("--shapes", nargs="*", help="echo shapes to run (bulk rtt1 rtt32 conn1000)")
    opts = parser.parse_args()
    repeats = 1 if opts.quick else 5
    fixtures: list[dict[str, object]] = []
    if not opts.echo_only:
        print("per-test fixture cost (suite minus trivial suite):", flush=True)
        fixtures = fixture_costs(repeats, 0.3 if opts.quick else 1.0)
    print("echo throughput (load generator in its own process, every server in its own):",
          flush=True)
    echo = throughput(1.0 if opts.quick else 3.0, 1 if opts.quick else 3, opts.shapes)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    report = {"fixtures": fixtures, "echo": echo}
    (results / "servers.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
