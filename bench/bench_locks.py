"""Lock-tracking benchmarks, measured side by side in one run.

    python bench/bench_locks.py [--tests 3000] [--reps 5] [--n 200000]

1. ``with lock:`` on an uncontended lock, and a nested pair ``with a: with b:``, for a plain
   ``threading.Lock`` and for the tracked lock with the deadlock detector's bookkeeping
   (owner, acquisition site), and with the lock-order check's on top (each thread's held
   locks, the edge look-up for the nested pair). ``--reps`` x 10 rounds of ``--n`` / 10
   iterations each, the modes interleaved round by round, and the minimum kept (the machine
   is shared: the minimum is the least disturbed). Reported: ns per iteration and the ratio
   to plain.
2. A generated suite of ``--tests`` trivial tests, each run in a fresh ``python -m pytest``
   subprocess: no options, ``--deadlock-timeout=60``, ``--lock-order-check``, both. A conftest
   times the session (from ``pytest_sessionstart`` to the end of ``pytest_sessionfinish``);
   the session's CPU time and the whole process's wall time are reported too. Runs are
   interleaved (the order rotated each round); medians of ``--reps`` runs, and the minimum
   session time (the least disturbed run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from pytest_netthreads.detect import locks
from pytest_netthreads.detect.deadlock import DeadlockDetector
from pytest_netthreads.detect.lockorder import LockOrderChecker


def _single(lock: object, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        with lock:  # type: ignore[attr-defined]
            pass
    return time.perf_counter() - start


def _nested(pair: tuple[object, object], n: int) -> float:
    a, b = pair
    start = time.perf_counter()
    for _ in range(n):
        with a:  # type: ignore[attr-defined]
            with b:  # type: ignore[attr-defined]
                pass
    return time.perf_counter() - start


def bench_with_lock(n: int, reps: int) -> dict[tuple[str, str], float]:
    """Best ns per iteration for each (mode, shape); modes interleaved in short rounds."""
    plain = (threading.Lock(), threading.Lock(), threading.Lock())
    best: dict[tuple[str, str], float] = {}
    rounds = reps * 10
    chunk = max(1, n // 10)
    # Tracking stays installed throughout (the detector's one watchdog thread runs); the
    # lock-order bookkeeping is switched on and off around its rounds.
    with DeadlockDetector():
        tracked = (threading.Lock(), threading.Lock(), threading.Lock())
        assert all(isinstance(lock, locks.TrackedLock) for lock in tracked)
        checker = LockOrderChecker()
        for _ in range(rounds):
            for mode in ("plain", "deadlock", "deadlock+lock-order"):
                trio = plain if mode == "plain" else tracked
                if mode == "deadlock+lock-order":
                    checker.start()
                try:
                    t1 = _single(trio[0], chunk) / chunk * 1e9
                    t2 = _nested((trio[1], trio[2]), chunk) / chunk * 1e9
                finally:
                    if mode == "deadlock+lock-order":
                        checker.stop()
                for key, value in (((mode, "single"), t1), ((mode, "nested"), t2)):
                    best[key] = min(best.get(key, float("inf")), value)
    return best


CONFTEST = """
import os, time
import pytest

_start = []

def pytest_sessionstart(session):
    _start.extend((time.perf_counter(), time.process_time()))

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    with open(os.environ["BENCH_LOCKS_OUT"], "w") as f:
        f.write(f"{time.perf_counter() - _start[0]!r} {time.process_time() - _start[1]!r}")
"""


Suite = dict[str, dict[str, list[float]]]


def bench_suite(tests: int, reps: int) -> Suite:
    """Per variant: the session's wall and CPU seconds and the process's wall seconds, one
    entry per run. The variants run interleaved, in a rotated order each round."""
    variants = {
        "no detector": [],
        "--deadlock-timeout=60": ["--deadlock-timeout=60"],
        "--lock-order-check": ["--lock-order-check"],
        "both": ["--deadlock-timeout=60", "--lock-order-check"],
    }
    runs: Suite = {k: {"session": [], "cpu": [], "process": []} for k in variants}
    with tempfile.TemporaryDirectory(prefix="bench-locks-") as tmp:
        with open(os.path.join(tmp, "conftest.py"), "w") as f:
            f.write(CONFTEST)
        per_file = 500
        for start in range(0, tests, per_file):
            with open(os.path.join(tmp, f"test_trivial_{start}.py"), "w") as f:
                for i in range(start, min(tests, start + per_file)):
                    f.write(f"def test_{i}():\n    pass\n\n")
        with open(os.path.join(tmp, "pytest.ini"), "w") as f:
            f.write("[pytest]\n")
        out = os.path.join(tmp, "out.txt")
        env = dict(os.environ, BENCH_LOCKS_OUT=out)
        names = list(variants)
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
                cmd += variants[name]
                t0 = time.perf_counter()
                proc = subprocess.run(
                    cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600
                )
                runs[name]["process"].append(time.perf_counter() - t0)
                if proc.returncode != 0 or f"{tests} passed" not in proc.stdout:
                    raise RuntimeError(f"{name}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
                with open(out) as f:
                    wall_s, cpu_s = f.read().split()
                runs[name]["session"].append(float(wall_s))
                runs[name]["cpu"].append(float(cpu_s))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="300 tests, 2 runs (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.tests, args.reps, args.n = 300, 2, 50_000

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"\n1. `with lock:` (min of {args.reps * 10} interleaved rounds of {args.n // 10})")
    micro = bench_with_lock(args.n, args.reps)
    print(f"{'mode':<20} {'single ns':>10} {'x plain':>8} {'nested ns':>10} {'x plain':>8}")
    for mode in ("plain", "deadlock", "deadlock+lock-order"):
        s, n = micro[(mode, "single")], micro[(mode, "nested")]
        ps, pn = micro[("plain", "single")], micro[("plain", "nested")]
        print(f"{mode:<20} {s:>10.0f} {s / ps:>8.2f} {n:>10.0f} {n / pn:>8.2f}")

    print(
        f"\n2. {args.tests} trivial tests ({args.reps} interleaved runs each; median and"
        " minimum, x: over no detector)"
    )
    suite = bench_suite(args.tests, args.reps)
    base = suite["no detector"]
    print(
        f"{'options':<24} {'session s':>9} {'x':>6} {'min s':>6} {'x':>6} {'CPU s':>6} {'x':>6}"
        f" {'process s':>9} {'x':>6}"
    )
    columns = (
        ("session", statistics.median, 9),
        ("session", min, 6),
        ("cpu", statistics.median, 6),
        ("process", statistics.median, 9),
    )
    for name, runs in suite.items():
        cells = []
        for key, pick, width in columns:
            value = pick(runs[key])
            cells.append(f"{value:>{width}.2f} {value / pick(base[key]):>6.3f}")
        print(f"{name:<24} " + " ".join(cells))

    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "locks.json"), "w") as f:
        json.dump(
            {
                "with_lock_ns": {f"{mode} {shape}": ns for (mode, shape), ns in micro.items()},
                "suites": suite,
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
