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
   the whole process's wall time is reported too. Runs are interleaved, median of ``--reps``.
"""

from __future__ import annotations

import argparse
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
    _start.append(time.perf_counter())

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    with open(os.environ["BENCH_LOCKS_OUT"], "w") as f:
        f.write(repr(time.perf_counter() - _start[0]))
"""


def bench_suite(tests: int, reps: int) -> dict[str, tuple[float, float]]:
    variants = {
        "no detector": [],
        "--deadlock-timeout=60": ["--deadlock-timeout=60"],
        "--lock-order-check": ["--lock-order-check"],
        "both": ["--deadlock-timeout=60", "--lock-order-check"],
    }
    session: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
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
        for _ in range(reps):
            for name, args in variants.items():
                cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
                t0 = time.perf_counter()
                proc = subprocess.run(
                    cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600
                )
                wall[name].append(time.perf_counter() - t0)
                if proc.returncode != 0 or f"{tests} passed" not in proc.stdout:
                    raise RuntimeError(f"{name}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
                with open(out) as f:
                    session[name].append(float(f.read()))
    return {k: (statistics.median(session[k]), statistics.median(wall[k])) for k in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"\n1. `with lock:` (min of {args.reps * 10} interleaved rounds of {args.n // 10})")
    micro = bench_with_lock(args.n, args.reps)
    print(f"{'mode':<20} {'single ns':>10} {'x plain':>8} {'nested ns':>10} {'x plain':>8}")
    for mode in ("plain", "deadlock", "deadlock+lock-order"):
        s, n = micro[(mode, "single")], micro[(mode, "nested")]
        ps, pn = micro[("plain", "single")], micro[("plain", "nested")]
        print(f"{mode:<20} {s:>10.0f} {s / ps:>8.2f} {n:>10.0f} {n / pn:>8.2f}")

    print(f"\n2. {args.tests} trivial tests (median of {args.reps} interleaved runs)")
    suite = bench_suite(args.tests, args.reps)
    base_s, base_w = suite["no detector"]
    print(f"{'options':<24} {'session s':>9} {'x':>6} {'process s':>9} {'x':>6}")
    for name, (sess, wall) in suite.items():
        print(f"{name:<24} {sess:>9.2f} {sess / base_s:>6.3f} {wall:>9.2f} {wall / base_w:>6.3f}")


if __name__ == "__main__":
    main()
